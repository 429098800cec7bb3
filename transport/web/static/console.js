// @ts-check
// The console: send any pkg_id with any data on the page's connection and see the answer, or
// the refusal (status_code, msg, data.errors) exactly as the server gave it.

import { SwitchboardError } from '/client/switchboard.js';

/** Messages a user can send, with an example data each. */
export const PRESETS = [
  [1, 'GET_AUTHORS', { filters: { name: '' } }],
  [2, 'GET_PAGINATED_AUTHORS', { page: 1, per_page: 5 }],
  [3, 'CREATE_AUTHOR', { name: 'Ursula K. Le Guin' }],
  [4, 'UPDATE_AUTHOR', { id: 1, name: 'A new name' }],
  [5, 'DELETE_AUTHOR', { id: 1 }],
  [12, 'REFRESH_TOKEN', { token: '…' }],
  [20, 'GET_AUDIT_LOGS', { page: 1, per_page: 5 }],
];

/**
 * wireConsole makes the console's form send through client.
 * @param {HTMLFormElement} form
 * @param {HTMLElement} out
 * @param {() => import('/client/switchboard.js').Client | null} client
 */
export function wireConsole(form, out, client) {
  const preset = /** @type {HTMLSelectElement} */ (form.elements.namedItem('preset'));
  const pkg = /** @type {HTMLInputElement} */ (form.elements.namedItem('pkg_id'));
  const data = /** @type {HTMLTextAreaElement} */ (form.elements.namedItem('data'));
  for (const [id, name] of PRESETS) {
    const o = form.ownerDocument.createElement('option');
    o.value = String(id);
    o.textContent = `${id} ${name}`;
    preset.append(o);
  }
  const pick = () => {
    const p = PRESETS.find(([id]) => String(id) === preset.value);
    if (!p) return;
    pkg.value = String(p[0]);
    data.value = JSON.stringify(p[2], null, 2);
  };
  preset.addEventListener('change', pick);
  pick();
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const c = client();
    if (!c) return;
    let body;
    try {
      body = data.value.trim() === '' ? undefined : JSON.parse(data.value);
    } catch (e) {
      out.textContent = `data is not JSON: ${/** @type {Error} */ (e).message}`;
      return;
    }
    const started = performance.now();
    out.textContent = `pkg_id ${pkg.value}: waiting…`;
    try {
      const a = await c.request(Number(pkg.value), body);
      out.textContent = `${took(started)}\n${JSON.stringify(a, null, 2)}`;
    } catch (e) {
      if (e instanceof SwitchboardError) {
        const { pkg_id, req_id, status_code, msg, data: d } = e;
        out.textContent = `${took(started)} refused\n${JSON.stringify({ pkg_id, req_id, status_code, msg, data: d }, null, 2)}`;
      } else {
        out.textContent = `${took(started)} ${/** @type {Error} */ (e).name}: ${/** @type {Error} */ (e).message}`;
      }
    }
  });
}

/** @param {number} started */
function took(started) {
  return `answered in ${Math.round(performance.now() - started)} ms`;
}
