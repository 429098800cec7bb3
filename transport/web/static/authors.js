// @ts-check
// The authors table, kept live from the topic authors: loaded with GET_AUTHORS, then changed by
// the created/updated/deleted events; reloaded whenever the subscription could not recover what
// a reconnect missed.

/**
 * @typedef {{id: number, name: string}} Author
 */

export class AuthorsTable {
  /**
   * @param {HTMLTableSectionElement} body
   * @param {HTMLElement} count
   * @param {{canUpdate: boolean, canDelete: boolean, onRename: (a: Author) => void, onDelete: (a: Author) => void}} o
   */
  constructor(body, count, o) {
    this.body = body;
    this.count = count;
    this.o = o;
    /** @type {Map<number, Author>} */
    this.rows = new Map();
    /** Events that came before the table was loaded, applied after it. @type {any[] | null} */
    this.early = [];
  }

  /** load replaces the table with a fresh list, then applies the events that came meanwhile.
   * @param {Author[]} list */
  load(list) {
    this.rows = new Map(list.map((a) => [a.id, a]));
    const early = this.early ?? [];
    this.early = null;
    for (const e of early) this.applyNow(e, false);
    this.render(new Set());
  }

  /** reloading: events from now on wait for the next load. */
  reloading() {
    this.early ??= [];
  }

  /** @param {any} event an authors event: {event, author} */
  apply(event) {
    if (this.early) {
      this.early.push(event);
      return;
    }
    const fresh = this.applyNow(event, true);
    this.render(fresh ? new Set([fresh]) : new Set());
  }

  /**
   * @param {any} e
   * @param {boolean} live
   * @returns {number | undefined} the id of a row that appeared or changed
   */
  applyNow(e, live) {
    const a = e?.author;
    if (!a || typeof a.id !== 'number') return undefined;
    if (e.event === 'deleted') {
      this.rows.delete(a.id);
      return undefined;
    }
    this.rows.set(a.id, { id: a.id, name: a.name });
    return live ? a.id : undefined;
  }

  /** @param {Set<number>} fresh */
  render(fresh) {
    const doc = this.body.ownerDocument;
    const trs = [...this.rows.values()].sort((x, y) => x.id - y.id).map((a) => {
      const tr = doc.createElement('tr');
      tr.dataset.id = String(a.id);
      if (fresh.has(a.id)) tr.className = 'fresh';
      const id = doc.createElement('td');
      id.textContent = String(a.id);
      const name = doc.createElement('td');
      name.textContent = a.name; // text, never HTML: names come from users
      const actions = doc.createElement('td');
      if (this.o.canUpdate) actions.append(button(doc, 'rename', '', () => this.o.onRename(a)));
      if (this.o.canDelete) actions.append(button(doc, 'delete', 'danger', () => this.o.onDelete(a)));
      tr.append(id, name, actions);
      return tr;
    });
    this.body.replaceChildren(...trs);
    this.count.textContent = `${this.rows.size}`;
  }
}

/**
 * @param {Document} doc
 * @param {string} text
 * @param {string} cls
 * @param {() => void} onClick
 */
function button(doc, text, cls, onClick) {
  const b = doc.createElement('button');
  b.type = 'button';
  b.className = `link ${cls}`.trim();
  b.textContent = text;
  b.addEventListener('click', onClick);
  return b;
}
