// @ts-check
// The live charts: uPlot (vendored, global uPlot) over a window of the latest sys.stats samples.

/** How many samples a chart keeps: two minutes at one a second. */
export const WINDOW = 120;

/**
 * @typedef {object} Series
 * @property {string} label
 * @property {string} stroke
 * @property {(s: any) => number | null} value reads the series' value from a sys.stats message
 */

/**
 * LiveChart is one uPlot chart fed sample by sample.
 */
export class LiveChart {
  /**
   * @param {HTMLElement} el
   * @param {Series[]} series
   */
  constructor(el, series) {
    this.el = el;
    this.series = series;
    /** @type {(number | null)[][]} x (seconds), then one array per series */
    this.data = [[], ...series.map(() => [])];
    // @ts-ignore uPlot is the vendored library's global
    const U = globalThis.uPlot;
    this.plot = new U({
      width: this.width(),
      height: 160,
      legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (_u, min, max) => [0, Math.max(max * 1.2, 1)] } },
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2, spanGaps: false, points: { show: false } }))],
      axes: [{ stroke: '#6b7280', grid: { stroke: '#f3f4f6' } }, { stroke: '#6b7280', grid: { stroke: '#f3f4f6' }, size: 50 }],
    }, this.data, el);
  }

  width() {
    return Math.max(this.el.clientWidth || 300, 200);
  }

  /** @param {any} stats a sys.stats message's data */
  push(stats) {
    const t = Date.parse(stats.at) / 1000 || Date.now() / 1000;
    this.data[0].push(t);
    this.series.forEach((s, i) => this.data[i + 1].push(s.value(stats)));
    if (this.data[0].length > WINDOW) for (const a of this.data) a.shift();
    this.plot.setData(this.data);
  }

  /** A gap: the stream stopped (a reconnect), so the lines do not join across it. */
  gap() {
    if (this.data[0].length === 0) return;
    this.data[0].push(/** @type {number} */ (this.data[0].at(-1)) + 0.001);
    for (let i = 1; i < this.data.length; i++) this.data[i].push(null);
  }

  resize() {
    this.plot.setSize({ width: this.width(), height: 160 });
  }

  /** How many samples the chart holds (the browser test reads it). */
  get samples() {
    return this.data[0].length;
  }
}

/**
 * statsCharts builds the four charts of the page.
 * @param {Document} doc
 */
export function statsCharts(doc) {
  const el = (/** @type {string} */ id) => /** @type {HTMLElement} */ (doc.getElementById(id));
  const charts = [
    new LiveChart(el('chart-conns'), [{ label: 'connections', stroke: '#2563eb', value: (s) => s.connections }]),
    new LiveChart(el('chart-msgs'), [
      { label: 'in', stroke: '#16a34a', value: (s) => s.messages_in_per_s },
      { label: 'out', stroke: '#9333ea', value: (s) => s.messages_out_per_s },
    ]),
    new LiveChart(el('chart-latency'), [{ label: 'mean ms', stroke: '#ea580c', value: (s) => s.broadcast_mean_ms ?? null }]),
    new LiveChart(el('chart-limits'), [{ label: 'refusals/s', stroke: '#dc2626', value: (s) => s.rate_limit_hits_per_s }]),
  ];
  let timer;
  addEventListener('resize', () => {
    clearTimeout(timer);
    timer = setTimeout(() => charts.forEach((c) => c.resize()), 100);
  });
  return charts;
}
