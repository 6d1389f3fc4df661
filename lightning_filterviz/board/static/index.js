// The Filters tab: a layer's filters over the snapshots of a run, and one filter's page.
// TensorBoard loads this module into the plugin's iframe and calls render(); every URL is
// relative to the iframe's <base href>, so the page works under any --path_prefix.

const HASH_PREFIX = "p.filterviz.";
const URL_KEYS = ["run", "layer", "filter"];
const REFRESH_INTERVAL_MS = 15000;

const MAP_MAX_WIDTH = 900;
const MAP_MIN_WIDTH = 120;
// Rows shrink to keep a 64-filter layer on one screen, but not below what a pointer can hit.
const MAP_TARGET_HEIGHT = 384;
const MIN_ROW_HEIGHT = 6;
const MAX_ROW_HEIGHT = 18;
// Vertical room a row label needs, so that labels of thin rows never overlap.
const ROW_LABEL_PITCH = 13;
// Below these sizes, separators between cells would hide the cells themselves.
const MIN_CELL_WIDTH_FOR_SEPARATORS = 6;
const MIN_ROW_HEIGHT_FOR_SEPARATORS = 10;

const FRAME_SCALE = 2;
// From this side on, pictures (feature visualizations, the model's input size) are shown at their own size.
const LARGE_PICTURE = 64;
const CHART = { width: 430, height: 150, left: 48, right: 14, top: 24, bottom: 24 };
const EMPTY_CHART_HEIGHT = 40;
// With few snapshots, a dot per snapshot shows where the line's corners are measured.
const MAX_SNAPSHOTS_WITH_DOTS = 60;

// A filter's state at a snapshot, as the `layer` and `filter` answers code it.
const UNKNOWN = -1;
const ALIVE = 0;
const DORMANT = 1;
const DEAD = 2;

const NO_DATA_COLOR = "#ededed";
const STATES = new Map([
  [ALIVE, { name: "alive", color: "#cfe3cd" }],
  [DORMANT, { name: "dormant", color: "#f2b33d" }],
  [DEAD, { name: "dead", color: "#d8473d" }],
  [UNKNOWN, { name: "unknown", color: NO_DATA_COLOR }],
]);

const METRICS = [
  { key: "state", label: "state" },
  {
    key: "drift",
    label: "drift",
    description: "1 − cosine to the filter's first weights",
    palette: ["#f7fcf0", "#ccebc5", "#7bccc4", "#2b8cbe", "#084081"],
    range: () => [0, 1],
    openEnded: true,
  },
  {
    key: "mean_activation",
    label: "mean activation",
    description: "mean |activation| on the probe",
    palette: ["#fcfbfd", "#dadaeb", "#9e9ac8", "#6a51a3", "#3f007d"],
    range: (layer) => [0, largestValue(layer.mean_activation)],
    openEnded: false,
  },
  {
    key: "dormant_score",
    label: "dormant score",
    description: "mean activation / layer mean: low is dormant",
    palette: ["#b2182b", "#ef8a62", "#f7f7f7", "#67a9cf", "#2166ac"],
    range: () => [0, 2],
    openEnded: true,
    // The middle of the range is the layer's mean, where the palette turns.
    midTick: true,
  },
  {
    key: "grad_score",
    label: "gradient score",
    description: "mean |gradient| of the weights / layer mean: 0 is no gradient (gradient-dormant)",
    palette: ["#762a83", "#af8dc3", "#f7f7f7", "#7fbf7b", "#1b7837"],
    range: () => [0, 2],
    openEnded: true,
    midTick: true,
  },
];

const CURVES = [
  { key: "mean_activation", label: "mean activation", include: [0] },
  { key: "dormant_score", label: "dormant score", include: [0], reference: 1 },
  { key: "drift", label: "drift", include: [0] },
  { key: "norm_ratio", label: "norm ratio", reference: 1 },
  // Shaded where the filter's weights got no gradient, instead of where it is dormant or dead.
  { key: "grad_score", label: "gradient score", include: [0], reference: 1, bands: "grad_dormant" },
];

// The layer's gradient-dormant fraction over the snapshots whose gradients were read.
const GRAD_FRACTION_CURVE = { key: "values", label: "gradient-dormant fraction", include: [0, 1] };

// The layer's health signals over the snapshots (the `layer` answer's `health`).
const LAYER_CURVES = [
  { key: "effective_rank", label: "effective rank", include: [0] },
  { key: "srank", label: "srank", include: [0] },
  { key: "cka_to_first", label: "CKA to the first snapshot", include: [0], reference: 1 },
];

const FROZEN_NOTE = "no gradient score: the conv is frozen (its weight does not require grad)";

const EMPTY_NOTE =
  "No run under this log directory has filterviz history yet. " +
  "Train with FilterMonitor (save_history=True, the default), then reload.";

const STYLE = `
  :root { color-scheme: light; }
  body {
    margin: 0; padding: 12px 16px 32px; background: #f5f5f5; color: #212121;
    font: 13px/1.45 system-ui, sans-serif;
  }
  button, select { font: inherit; color: inherit; }
  [hidden] { display: none !important; }
  .toolbar { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 20px; margin-bottom: 10px; }
  .toolbar label { display: inline-flex; align-items: center; gap: 6px; color: #616161; }
  .toolbar select {
    min-width: 120px; max-width: 320px; padding: 3px 6px; background: #fff;
    border: 1px solid #bdbdbd; border-radius: 3px;
  }
  .switch { display: inline-flex; align-items: center; gap: 6px; color: #616161; }
  .switch-options { display: inline-flex; border: 1px solid #bdbdbd; border-radius: 3px; overflow: hidden; }
  .switch-options label {
    padding: 3px 10px; background: #fff; color: #424242; cursor: pointer; border-left: 1px solid #e0e0e0;
  }
  .switch-options label:first-child { border-left: 0; }
  .switch-options input { position: absolute; opacity: 0; width: 1px; height: 1px; margin: 0; }
  .switch-options label:has(input:checked) { background: #fff3e0; color: #e65100; }
  .switch-options label:has(input:focus-visible) { outline: 2px solid #f57c00; outline-offset: -2px; }
  .message {
    margin: 0 0 10px; padding: 6px 10px; background: #fdecea; color: #8e1b10;
    border-left: 3px solid #d32f2f; border-radius: 2px;
  }
  .empty { margin: 24px 0; color: #616161; font-size: 14px; }
  .card {
    position: relative; background: #fff; border: 1px solid #e0e0e0; border-radius: 4px;
    padding: 12px 16px 14px; margin-bottom: 12px;
  }
  .summary { margin: 0 0 10px; color: #616161; }
  .summary strong { color: #212121; font-weight: 600; }
  .map { display: flex; align-items: flex-start; }
  .map-rows { display: flex; flex-direction: column; width: 44px; flex: none; padding-right: 6px; }
  .map-row {
    display: block; padding: 0; border: 0; background: none; text-align: right; overflow: visible;
    white-space: nowrap; font-size: 11px; color: #757575; cursor: pointer;
  }
  .map-row:hover, .map-row.selected { color: #e65100; font-weight: 600; }
  .map-plot { flex: none; }
  #map-canvas { display: block; cursor: pointer; }
  .map-steps { display: flex; justify-content: space-between; color: #757575; font-size: 11px; margin-top: 3px; }
  .legend {
    display: flex; flex-wrap: wrap; align-items: center; gap: 4px 14px; margin: 10px 0 0 50px;
    color: #616161; font-size: 12px;
  }
  .swatch {
    display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 5px;
    vertical-align: -1px; box-shadow: inset 0 0 0 1px rgba(0,0,0,.12);
  }
  .ramp { display: inline-flex; flex-direction: column; gap: 2px; }
  .ramp-bar { width: 180px; height: 10px; border-radius: 2px; box-shadow: inset 0 0 0 1px rgba(0,0,0,.12); }
  .ramp-ticks { position: relative; height: 14px; font-size: 11px; }
  .ramp-ticks span { position: absolute; transform: translateX(-50%); white-space: nowrap; }
  .ramp-ticks span:first-child { transform: none; }
  .ramp-ticks span:last-child { transform: translateX(-100%); }
  .tooltip {
    position: absolute; z-index: 2; pointer-events: none; padding: 5px 8px; background: rgba(33,33,33,.92);
    color: #fff; border-radius: 3px; font-size: 12px; line-height: 1.4; white-space: nowrap;
  }
  .tooltip strong { font-weight: 600; }
  .filter-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 14px; }
  .filter-head h2 { margin: 0; font-size: 15px; font-weight: 600; }
  .filter-head .summary { margin: 0; }
  .filter-nav { margin-left: auto; display: flex; gap: 6px; }
  .filter-nav button {
    padding: 2px 9px; background: #fff; border: 1px solid #bdbdbd; border-radius: 3px; cursor: pointer;
  }
  .filter-nav button:hover:not(:disabled) { border-color: #f57c00; color: #e65100; }
  .filter-nav button:disabled { color: #bdbdbd; cursor: default; }
  h3 { margin: 16px 0 6px; font-size: 13px; font-weight: 600; color: #424242; }
  h3 .hint { font-weight: 400; color: #757575; margin-left: 6px; }
  .curves { display: flex; flex-wrap: wrap; gap: 8px 16px; }
  .chart { display: block; font-size: 11px; }
  .chart text { fill: #616161; }
  .chart .chart-title { fill: #212121; font-size: 12px; font-weight: 600; }
  .chart .plot-frame { fill: none; stroke: #e0e0e0; }
  .chart .reference { stroke: #9e9e9e; stroke-dasharray: 3 3; }
  .chart .line { fill: none; stroke: #1565c0; stroke-width: 1.6; stroke-linejoin: round; }
  .chart .dot { fill: #1565c0; }
  .chart .band-dormant { fill: rgba(242,179,61,.28); }
  .chart .band-dead { fill: rgba(216,71,61,.2); }
  .chart .band-grad-dormant { fill: rgba(142,36,170,.18); }
  .chart .cursor { stroke: #757575; }
  .chart .cursor-dot { fill: #fff; stroke: #1565c0; stroke-width: 2; }
  .chart .readout { fill: #212121; }
  .timeline { display: flex; gap: 6px; overflow-x: auto; padding-bottom: 6px; }
  .frame-cell { flex: none; margin: 0; display: flex; flex-direction: column; align-items: stretch; }
  .frame { background-repeat: no-repeat; image-rendering: pixelated; }
  .frame-cell figcaption {
    border-top: 3px solid var(--state-color); padding-top: 1px; text-align: center;
    font-size: 10px; color: #757575;
  }
  .examples { display: flex; flex-direction: column; gap: 6px; overflow-x: auto; }
  .examples-row { display: flex; align-items: center; gap: 4px; }
  .examples-step { flex: none; width: 78px; color: #616161; font-size: 12px; }
  .tile { flex: none; background-repeat: no-repeat; image-rendering: pixelated; }
  .none { margin: 0; color: #757575; font-style: italic; }
`;

/**
 * Builds the Filters tab into `document.body` and keeps it up to date.
 *
 * The run, layer and filter shown come from TensorBoard's URL hash (`p.filterviz.run`,
 * `p.filterviz.layer`, `p.filterviz.filter`) or from the page's own query string
 * (`?run=&layer=&filter=`), and are written back to TensorBoard's hash as they change.
 * The page fetches its data again every 15 seconds while training writes new snapshots.
 *
 * @returns {Promise<void>} settled once the first map (and the filter the URL names) is shown.
 */
export async function render() {
  document.head.append(element("style", {}, STYLE));
  const page = new FiltersPage(document.body);
  await page.start();
}

class FiltersPage {
  /** @param {HTMLElement} root */
  constructor(root) {
    this.runs = [];
    this.selection = { run: null, layer: null, filter: null };
    this.metric = "state";
    this.layer = null; // the `layer` answer the map shows
    this.filter = null; // the `filter` answer the filter page shows
    this.errors = new Map();
    this.refreshing = false;
    this.ui = buildSkeleton(root);
    this.listen();
  }

  async start() {
    if (await this.loadRuns()) await this.select(readUrlState());
    setInterval(() => void this.refresh(), REFRESH_INTERVAL_MS);
  }

  listen() {
    const { ui } = this;
    ui.runSelect.addEventListener("change", () => void this.select({ ...this.selection, run: ui.runSelect.value }));
    ui.layerSelect.addEventListener("change", () =>
      void this.select({ run: this.selection.run, layer: ui.layerSelect.value, filter: null }),
    );
    ui.metricSwitch.addEventListener("change", (event) => this.chooseMetric(event.target.value));
    ui.rows.addEventListener("click", (event) => {
      const row = event.target.closest("[data-filter]");
      if (row) void this.openFilter(Number(row.dataset.filter));
    });
    ui.canvas.addEventListener("mousemove", (event) => this.showCellTooltip(event));
    ui.canvas.addEventListener("mouseleave", () => {
      ui.tooltip.hidden = true;
    });
    ui.canvas.addEventListener("click", (event) => {
      const cell = this.cellAt(event);
      if (cell) void this.openFilter(cell.row);
    });
    ui.previous.addEventListener("click", () => void this.openFilter(this.selection.filter - 1));
    ui.next.addEventListener("click", () => void this.openFilter(this.selection.filter + 1));
    ui.close.addEventListener("click", () => this.closeFilter());
    window.addEventListener("resize", () => this.drawMap());
    followParentAddress(() => void this.followAddress());
  }

  // ---- what is selected

  /** Shows the run, layer and filter asked for, or the nearest that exists. */
  async select(wanted) {
    const run = this.runs.find((candidate) => candidate.run === wanted.run) ?? this.runs[0];
    const layer = run.layers.includes(wanted.layer) ? wanted.layer : run.layers[0];
    const filter = layer === wanted.layer ? parseFilter(wanted.filter) : null;
    this.selection = { run: run.run, layer, filter };
    this.fillSelects();
    writeUrlState(this.selection);
    await this.loadLayer();
    this.markSelectedRow();
    if (this.selection.filter === null) this.hideFilter();
    else await this.loadFilter();
  }

  async openFilter(index) {
    if (!this.layer || index < 0 || index >= this.layer.out_channels) return;
    const opening = this.filter === null;
    this.selection = { ...this.selection, filter: index };
    writeUrlState(this.selection);
    this.markSelectedRow();
    await this.loadFilter();
    if (opening) this.ui.filterView.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  /** Shows what TensorBoard's address names, when a link opened in its tab names something
   * other than what is shown (the tab is not loaded again, so nothing else would notice). */
  async followAddress() {
    const wanted = readUrlState();
    if (wanted.run === undefined) return; // the address names another tab of TensorBoard's
    const shown = this.selection;
    const filter = parseFilter(wanted.filter);
    if (wanted.run === shown.run && wanted.layer === shown.layer && filter === shown.filter) return;
    await this.select(wanted);
  }

  closeFilter() {
    this.selection = { ...this.selection, filter: null };
    writeUrlState(this.selection);
    this.hideFilter();
    this.markSelectedRow();
  }

  chooseMetric(metric) {
    this.metric = metric;
    this.showLegend();
    this.drawMap();
  }

  /** Whether the selection is still the one a request was made for, now that its answer came. */
  stillSelected(asked) {
    return Object.entries(asked).every(([key, value]) => this.selection[key] === value);
  }

  // ---- loading

  /** @returns {Promise<boolean>} whether there is a run to show. */
  async loadRuns() {
    const answer = await this.fetchOrReport("runs", "runs", {}, "the list of runs");
    if (!answer) return this.runs.length > 0;
    this.runs = answer.runs;
    const empty = this.runs.length === 0;
    this.ui.emptyNote.hidden = !empty;
    this.ui.toolbar.hidden = empty;
    this.ui.content.hidden = empty;
    return !empty;
  }

  async loadLayer() {
    const { run, layer } = this.selection;
    const answer = await this.fetchOrReport("layer", "layer", { run, layer }, `layer ${layer} of run ${run}`);
    if (!this.stillSelected({ run, layer })) return;
    if (!answer) {
      if (this.layer?.run !== run || this.layer?.layer !== layer) this.hideLayer();
      return;
    }
    if (sameLayerData(this.layer, answer)) return;
    this.layer = answer;
    if (this.selection.filter !== null && this.selection.filter >= answer.out_channels) this.closeFilter();
    this.showLayer();
  }

  async loadFilter() {
    if (!this.layer) {
      this.hideFilter();
      return;
    }
    const { run, layer, filter } = this.selection;
    const answer = await this.fetchOrReport("filter", "filter", { run, layer, filter }, `filter ${filter}`);
    if (!this.stillSelected({ run, layer, filter })) return;
    if (!answer) {
      this.hideFilter();
      return;
    }
    if (sameFilterData(this.filter, answer)) return;
    // The pictures are decoded before the page changes, so that a refresh swaps frames without a blank moment.
    const sprites = await loadSprites(answer);
    if (!this.stillSelected({ run, layer, filter })) return;
    this.filter = answer;
    this.showFilter(answer, sprites);
  }

  /** Fetches everything again, keeping what is shown where nothing changed. */
  async refresh() {
    if (this.refreshing || document.hidden) return;
    this.refreshing = true;
    try {
      if (!(await this.loadRuns())) return;
      if (!this.runs.some((run) => run.run === this.selection.run)) {
        // Nothing shown yet (the runs came after the page), or the shown run is gone.
        await this.select(this.selection.run === null ? readUrlState() : {});
        return;
      }
      this.fillSelects();
      await this.loadLayer();
      if (this.selection.filter !== null) await this.loadFilter();
    } finally {
      this.refreshing = false;
    }
  }

  async fetchOrReport(kind, route, parameters, what) {
    try {
      const answer = await fetchJson(route, parameters);
      this.setError(kind, null);
      return answer;
    } catch (error) {
      this.setError(kind, `Could not load ${what}: ${error.message}`);
      return null;
    }
  }

  setError(kind, message) {
    if (message === null) this.errors.delete(kind);
    else this.errors.set(kind, message);
    const shown = [...this.errors.values()].at(-1);
    this.ui.message.hidden = shown === undefined;
    this.ui.message.textContent = shown ?? "";
  }

  // ---- the pickers

  fillSelects() {
    const run = this.runs.find((candidate) => candidate.run === this.selection.run);
    fillOptions(this.ui.runSelect, this.runs.map((candidate) => candidate.run), this.selection.run);
    fillOptions(this.ui.layerSelect, run?.layers ?? [], this.selection.layer);
  }

  // ---- the layer map

  showLayer() {
    this.ui.layerView.hidden = false;
    this.ui.summary.replaceChildren(...describeLayer(this.layer));
    this.ui.rows.replaceChildren(...rowButtons(this.layer.out_channels, this.rowHeight()));
    this.ui.steps.replaceChildren(...stepLabels(this.layer.steps));
    this.showHealth();
    this.showGradients();
    this.showLegend();
    this.markSelectedRow();
  }

  /** The layer's gradient-dormant fraction over the steps, or why it has none (a frozen conv). */
  showGradients() {
    const { frozen, grad_dormant_fraction: fraction } = this.layer;
    const present = (fraction?.values ?? []).some(Number.isFinite);
    this.ui.gradientView.hidden = !present && !frozen;
    if (frozen) {
      this.ui.gradients.replaceChildren(
        noPictures("This conv is frozen: its weight does not require grad, so no filter of it learns (by design)."),
      );
    } else if (present) {
      const series = { steps: fraction.steps, state: fraction.steps.map(() => ALIVE), values: fraction.values };
      this.ui.gradients.replaceChildren(lineChart(GRAD_FRACTION_CURVE, series, "this layer"));
    }
  }

  /** The layer's health signals, where its history has them (files from before them have none). */
  showHealth() {
    const health = this.layer.health ?? {};
    const present = LAYER_CURVES.some((curve) => (health[curve.key] ?? []).some(Number.isFinite));
    this.ui.healthView.hidden = !present;
    if (!present) return;
    const series = { steps: this.layer.steps, state: this.layer.steps.map(() => ALIVE), ...health };
    this.ui.health.replaceChildren(...LAYER_CURVES.map((curve) => lineChart(curve, series, "this layer")));
  }

  hideLayer() {
    this.layer = null;
    this.ui.layerView.hidden = true;
    this.hideFilter();
  }

  rowHeight() {
    const fitted = Math.floor(MAP_TARGET_HEIGHT / this.layer.out_channels);
    return Math.min(MAX_ROW_HEIGHT, Math.max(MIN_ROW_HEIGHT, fitted));
  }

  mapWidth() {
    const room = this.ui.map.clientWidth - this.ui.rows.offsetWidth;
    return Math.max(MAP_MIN_WIDTH, Math.min(MAP_MAX_WIDTH, room));
  }

  drawMap() {
    if (!this.layer) return;
    const { canvas } = this.ui;
    const width = this.mapWidth();
    const rowHeight = this.rowHeight();
    const height = rowHeight * this.layer.out_channels;
    const scale = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    const context = canvas.getContext("2d");
    // One pixel per cell, stretched without smoothing: cells stay crisp at any size, and a
    // thousand snapshots cost one image instead of a thousand rectangles per row.
    context.imageSmoothingEnabled = false;
    context.drawImage(cellImage(this.layer, this.currentMetric()), 0, 0, canvas.width, canvas.height);
    context.scale(scale, scale);
    drawSeparators(context, width, rowHeight, this.layer);
    if (this.selection.filter !== null) drawRowOutline(context, width, rowHeight, this.selection.filter);
  }

  /** Marks the open filter's row label and outlines its row of the map. */
  markSelectedRow() {
    for (const row of this.ui.rows.children) {
      row.classList.toggle("selected", Number(row.dataset.filter) === this.selection.filter);
    }
    this.drawMap();
  }

  currentMetric() {
    return METRICS.find((metric) => metric.key === this.metric);
  }

  showLegend() {
    if (this.layer) this.ui.legend.replaceChildren(...legendItems(this.currentMetric(), this.layer));
  }

  /** @returns {{row: number, column: number} | null} the map cell under the pointer. */
  cellAt(event) {
    if (!this.layer) return null;
    const bounds = this.ui.canvas.getBoundingClientRect();
    const row = Math.floor((event.clientY - bounds.top) / this.rowHeight());
    const column = Math.floor(((event.clientX - bounds.left) / bounds.width) * this.layer.steps.length);
    const inside = row >= 0 && row < this.layer.out_channels && column >= 0 && column < this.layer.steps.length;
    return inside ? { row, column } : null;
  }

  showCellTooltip(event) {
    const { tooltip, layerView } = this.ui;
    const cell = this.cellAt(event);
    tooltip.hidden = cell === null;
    if (!cell) return;
    tooltip.replaceChildren(...describeCell(this.layer, cell));
    const card = layerView.getBoundingClientRect();
    const left = event.clientX - card.left + 14;
    const overflows = left + tooltip.offsetWidth > card.width;
    tooltip.style.left = `${overflows ? event.clientX - card.left - tooltip.offsetWidth - 10 : left}px`;
    tooltip.style.top = `${event.clientY - card.top + 14}px`;
  }

  // ---- the filter page

  showFilter(filter, sprites) {
    const { ui, layer } = this;
    ui.filterTitle.textContent = `layer ${filter.layer}, filter ${filter.filter}`;
    ui.filterSummary.textContent = describeFilterState(filter);
    ui.previous.disabled = filter.filter === 0;
    ui.next.disabled = filter.filter >= layer.out_channels - 1;
    ui.curves.replaceChildren(
      ...CURVES.map((curve) =>
        lineChart(curve, filter, "this filter", curve.key === "grad_score" && filter.frozen ? FROZEN_NOTE : null),
      ),
    );
    this.showPictures(filter, sprites);
    ui.filterView.hidden = false;
  }

  showPictures(filter, sprites) {
    const { ui, layer } = this;
    const stateAt = stateLookup(filter);
    ui.weightsCount.textContent = filter.weights ? plural(filter.weights.steps.length, "snapshot") : "";
    ui.mapsCount.textContent = filter.maps ? `on the probe image, ${plural(filter.maps.steps.length, "snapshot")}` : "";
    ui.examplesCount.textContent = filter.examples
      ? `strongest first, ${plural(filter.examples.steps.length, "validation run")}`
      : "";
    ui.weights.replaceChildren(
      ...(filter.weights
        ? frames(filter.weights, sprites.weights, stateAt)
        : [noPictures(missingWeightsReason(filter.filter, layer.drawn))]),
    );
    ui.maps.replaceChildren(
      ...(filter.maps
        ? frames(filter.maps, sprites.maps, stateAt)
        : [noPictures("No feature maps: the conv has no activation captured.")]),
    );
    ui.examples.replaceChildren(
      ...(filter.examples
        ? exampleRows(filter.examples, sprites.examples)
        : [noPictures("No dataset examples: no validation run has collected any for this filter yet.")]),
    );
    // Only the featvis_layers have feature visualizations: elsewhere the block stays out.
    ui.featvisView.hidden = !filter.feature_vis;
    ui.featvisCount.textContent = filter.feature_vis
      ? `the input that raises its mean rectified response most, ${plural(filter.feature_vis.steps.length, "validation run")}`
      : "";
    ui.featvis.replaceChildren(
      ...(filter.feature_vis
        ? frames(filter.feature_vis, sprites.feature_vis, stateAtOrBefore(filter), pictureScale(filter.feature_vis))
        : []),
    );
  }

  hideFilter() {
    this.filter = null;
    this.ui.filterView.hidden = true;
  }
}

// ---- the page's elements

function buildSkeleton(root) {
  const ui = {
    runSelect: element("select", { id: "run-select", "aria-label": "run" }),
    layerSelect: element("select", { id: "layer-select", "aria-label": "layer" }),
    metricSwitch: metricSwitch(),
    message: element("p", { id: "message", className: "message", role: "alert", hidden: true }),
    emptyNote: element("p", { id: "empty-note", className: "empty", hidden: true }, EMPTY_NOTE),
    summary: element("p", { id: "layer-summary", className: "summary" }),
    rows: element("div", { id: "map-rows", className: "map-rows" }),
    canvas: element("canvas", { id: "map-canvas" }),
    steps: element("div", { id: "map-steps", className: "map-steps" }),
    legend: element("div", { id: "map-legend", className: "legend" }),
    tooltip: element("div", { id: "map-tooltip", className: "tooltip", hidden: true }),
    filterTitle: element("h2", { id: "filter-title" }),
    filterSummary: element("p", { id: "filter-summary", className: "summary" }),
    previous: element("button", { id: "previous-filter", type: "button" }, "‹ previous"),
    next: element("button", { id: "next-filter", type: "button" }, "next ›"),
    close: element("button", { id: "close-filter", type: "button" }, "back to the layer"),
    curves: element("div", { id: "curves", className: "curves" }),
    health: element("div", { id: "layer-health", className: "curves" }),
    weightsCount: element("span", { className: "hint" }),
    mapsCount: element("span", { className: "hint" }),
    examplesCount: element("span", { className: "hint" }),
    featvisCount: element("span", { className: "hint" }),
    gradients: element("div", { id: "layer-gradients", className: "curves" }),
    weights: element("div", { id: "weights-timeline", className: "timeline" }),
    maps: element("div", { id: "maps-timeline", className: "timeline" }),
    examples: element("div", { id: "examples-timeline", className: "examples" }),
    featvis: element("div", { id: "featvis-timeline", className: "timeline" }),
  };
  ui.toolbar = element(
    "div",
    { className: "toolbar", hidden: true },
    element("label", {}, "Run", ui.runSelect),
    element("label", {}, "Layer", ui.layerSelect),
    ui.metricSwitch,
  );
  ui.map = element(
    "div",
    { className: "map" },
    ui.rows,
    element("div", { className: "map-plot" }, ui.canvas, ui.steps),
  );
  ui.healthView = element(
    "div",
    { className: "layer-health", hidden: true },
    element(
      "h3",
      {},
      "The layer's representation",
      element("span", { className: "hint" }, "of its probe features: falling rank = collapsing; CKA 1 = unchanged"),
    ),
    ui.health,
  );
  ui.gradientView = element(
    "div",
    { className: "layer-gradients", hidden: true },
    element(
      "h3",
      {},
      "Gradients",
      element("span", { className: "hint" }, "fraction of the filters whose weights get no gradient: they no longer learn"),
    ),
    ui.gradients,
  );
  ui.layerView = element(
    "section",
    { id: "layer-view", className: "card", hidden: true },
    ui.summary,
    ui.map,
    ui.legend,
    ui.gradientView,
    ui.healthView,
    ui.tooltip,
  );
  ui.featvisView = element(
    "div",
    { id: "featvis-view", hidden: true },
    element("h3", {}, "Feature visualizations", ui.featvisCount),
    ui.featvis,
  );
  ui.filterView = element(
    "section",
    { id: "filter-view", className: "card", hidden: true },
    element(
      "div",
      { className: "filter-head" },
      ui.filterTitle,
      ui.filterSummary,
      element("div", { className: "filter-nav" }, ui.previous, ui.next, ui.close),
    ),
    element(
      "h3",
      {},
      "Over the steps",
      element(
        "span",
        { className: "hint" },
        "shaded: dormant (amber), dead (red); behind the gradient score, gradient-dormant (purple)",
      ),
    ),
    ui.curves,
    element("h3", {}, "Weights", ui.weightsCount),
    ui.weights,
    element("h3", {}, "Feature maps", ui.mapsCount),
    ui.maps,
    element("h3", {}, "Dataset examples", ui.examplesCount),
    ui.examples,
    ui.featvisView,
  );
  ui.content = element("main", { id: "content", hidden: true }, ui.layerView, ui.filterView);
  root.append(ui.toolbar, ui.message, ui.emptyNote, ui.content);
  return ui;
}

function metricSwitch() {
  const options = METRICS.map((metric) =>
    element(
      "label",
      { dataset: { metric: metric.key }, title: metric.description ?? "alive, dormant or dead at each snapshot" },
      element("input", { type: "radio", name: "metric", value: metric.key, checked: metric.key === "state" }),
      metric.label,
    ),
  );
  return element(
    "div",
    { id: "metric-switch", className: "switch", role: "radiogroup", "aria-label": "colour the map by" },
    "Colour by",
    element("div", { className: "switch-options" }, ...options),
  );
}

/** Replaces a select's options only when the names changed, so an open select is not disturbed. */
function fillOptions(select, names, selected) {
  const current = [...select.options].map((option) => option.value);
  if (current.join("\n") !== names.join("\n")) {
    select.replaceChildren(...names.map((name) => element("option", { value: name }, name)));
  }
  select.value = selected ?? "";
}

/** A button per filter, as tall as its map row; only every few rows shows its number. */
function rowButtons(count, rowHeight) {
  const every = [1, 2, 4, 5, 8, 10, 16].find((step) => step * rowHeight >= ROW_LABEL_PITCH) ?? 16;
  return Array.from({ length: count }, (_, index) =>
    element(
      "button",
      {
        type: "button",
        className: "map-row",
        title: `filter ${index}`,
        "aria-label": `filter ${index}`,
        dataset: { filter: String(index) },
        style: { height: `${rowHeight}px`, lineHeight: `${rowHeight}px` },
      },
      index % every === 0 ? String(index) : "",
    ),
  );
}

function stepLabels(steps) {
  return [
    element("span", {}, `step ${steps[0] ?? "–"}`),
    element("span", {}, plural(steps.length, "snapshot")),
    element("span", {}, `step ${steps.at(-1) ?? "–"}`),
  ];
}

function describeLayer(layer) {
  const last = layer.state.map((row) => row.at(-1));
  // "unknown" only where some filter has no statistics: the usual three always show.
  const counts = [...STATES]
    .map(([code, { name }]) => ({ code, name, count: last.filter((state) => state === code).length }))
    .filter(({ code, count }) => count > 0 || code !== UNKNOWN)
    .map(({ name, count }) => `${count} ${name}`);
  const parts = [
    element("strong", {}, `${plural(layer.out_channels, "filter")} × ${plural(layer.steps.length, "snapshot")}`),
    `, steps ${layer.steps[0] ?? "–"} to ${layer.steps.at(-1) ?? "–"}`,
  ];
  if (layer.steps.length > 0) parts.push(` · at the last snapshot: ${counts.join(", ")}`);
  const lastGradients = (layer.grad_dormant ?? []).map((row) => row.at(-1));
  if (layer.frozen) parts.push(" · frozen (its weight does not require grad)");
  else if (lastGradients.some((flag) => flag !== null)) {
    parts.push(`, ${lastGradients.filter((flag) => flag === true).length} gradient-dormant`);
  }
  if (layer.drawn < layer.out_channels) parts.push(` · weights drawn for filters 0–${layer.drawn - 1}`);
  parts.push(" · click a row to open its filter");
  return parts;
}

function describeCell(layer, { row, column }) {
  const lines = [element("strong", {}, `filter ${row}, step ${layer.steps[column]}`)];
  lines.push(element("div", {}, `state: ${stateName(layer.state[row][column])}`));
  const gradient = layer.grad_dormant?.[row]?.[column];
  if (gradient === true) lines.push(element("div", {}, "gradient-dormant: its weights got no gradient"));
  for (const curve of CURVES) {
    lines.push(element("div", {}, `${curve.label}: ${formatNumber(layer[curve.key]?.[row][column])}`));
  }
  return lines;
}

/** "dead since step 252", "alive at every snapshot": the filter's state at its last snapshot, and since when. */
function describeFilterState(filter) {
  const { state, steps } = filter;
  if (state.length === 0) return "no snapshot yet";
  const last = state.at(-1);
  let since = state.length - 1;
  while (since > 0 && state[since - 1] === last) since -= 1;
  const name = stateName(last);
  if (since > 0) return `${name} since step ${steps[since]}`;
  return state.length > 1 ? `${name} at every snapshot` : `${name} at step ${steps[0]}`;
}

function missingWeightsReason(index, drawn) {
  return index >= drawn
    ? `No weights: the history keeps filters 0–${drawn - 1} only (max_filters).`
    : "No weights: the history has none for this filter.";
}

function noPictures(sentence) {
  return element("p", { className: "none" }, sentence);
}

// ---- the map's colours

function cellImage(layer, metric) {
  const columns = Math.max(1, layer.steps.length);
  const image = new ImageData(columns, layer.out_channels);
  const colorOf = metric.key === "state" ? stateRgb : continuousColor(metric, layer);
  const values = metric.key === "state" ? layer.state : layer[metric.key];
  for (let row = 0; row < layer.out_channels; row += 1) {
    for (let column = 0; column < layer.steps.length; column += 1) {
      const [red, green, blue] = colorOf(values?.[row]?.[column]);
      const offset = 4 * (row * columns + column);
      image.data.set([red, green, blue, 255], offset);
    }
  }
  const canvas = document.createElement("canvas");
  canvas.width = columns;
  canvas.height = layer.out_channels;
  canvas.getContext("2d").putImageData(image, 0, 0);
  return canvas;
}

function drawSeparators(context, width, rowHeight, layer) {
  const cellWidth = width / Math.max(1, layer.steps.length);
  context.strokeStyle = "rgba(255, 255, 255, 0.85)";
  context.lineWidth = 1;
  context.beginPath();
  if (rowHeight >= MIN_ROW_HEIGHT_FOR_SEPARATORS) {
    for (let row = 1; row < layer.out_channels; row += 1) {
      context.moveTo(0, row * rowHeight);
      context.lineTo(width, row * rowHeight);
    }
  }
  if (cellWidth >= MIN_CELL_WIDTH_FOR_SEPARATORS) {
    for (let column = 1; column < layer.steps.length; column += 1) {
      context.moveTo(Math.round(column * cellWidth), 0);
      context.lineTo(Math.round(column * cellWidth), layer.out_channels * rowHeight);
    }
  }
  context.stroke();
}

function drawRowOutline(context, width, rowHeight, row) {
  context.strokeStyle = "#212121";
  context.lineWidth = 2;
  context.strokeRect(1, row * rowHeight + 1, width - 2, rowHeight - 2);
}

function stateRgb(code) {
  return hexToRgb((STATES.get(code) ?? STATES.get(UNKNOWN)).color);
}

function stateName(code) {
  return (STATES.get(code) ?? STATES.get(UNKNOWN)).name;
}

/** Maps a metric's values on the layer to colours of its palette; missing values are grey. */
function continuousColor(metric, layer) {
  const [low, high] = metric.range(layer);
  const stops = metric.palette.map(hexToRgb);
  const missing = hexToRgb(NO_DATA_COLOR);
  return (value) => {
    if (typeof value !== "number" || !Number.isFinite(value)) return missing;
    const position = high > low ? Math.min(1, Math.max(0, (value - low) / (high - low))) : 0;
    const scaled = position * (stops.length - 1);
    const index = Math.min(stops.length - 2, Math.floor(scaled));
    const fraction = scaled - index;
    return stops[index].map((channel, at) => Math.round(channel + fraction * (stops[index + 1][at] - channel)));
  };
}

function legendItems(metric, layer) {
  if (metric.key === "state") {
    return [...STATES.values()].map(({ name, color }) => swatchLabel(color, name));
  }
  if (!layer[metric.key]) {
    return [swatchLabel(NO_DATA_COLOR, `no ${metric.label} in this run's history`)];
  }
  const [low, high] = metric.range(layer);
  const ticks = [[0, formatNumber(low)], [1, `${formatNumber(high)}${metric.openEnded ? "+" : ""}`]];
  if (metric.midTick) ticks.splice(1, 0, [0.5, formatNumber((low + high) / 2)]);
  const ramp = element(
    "span",
    { className: "ramp" },
    element("span", {
      className: "ramp-bar",
      style: { background: `linear-gradient(to right, ${metric.palette.join(", ")})` },
    }),
    element(
      "span",
      { className: "ramp-ticks" },
      ...ticks.map(([at, text]) => element("span", { style: { left: `${at * 100}%` } }, text)),
    ),
  );
  return [element("span", {}, `${metric.label}: ${metric.description}`), ramp, swatchLabel(NO_DATA_COLOR, "no data")];
}

function swatchLabel(color, text) {
  return element("span", {}, element("span", { className: "swatch", style: { background: color } }), text);
}

function hexToRgb(hex) {
  return [1, 3, 5].map((start) => parseInt(hex.slice(start, start + 2), 16));
}

// ---- curves

function lineChart(curve, filter, subject = "this filter", emptyNote = null) {
  const { width, height, left, right, top, bottom } = CHART;
  const chart = svgElement("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}` });
  chart.append(svgElement("text", { class: "chart-title", x: 0, y: 14 }, curve.label));
  const values = filter[curve.key];
  const steps = filter.steps;
  if (!values || !values.some(Number.isFinite)) {
    setAttributes(chart, { height: EMPTY_CHART_HEIGHT, viewBox: `0 0 ${width} ${EMPTY_CHART_HEIGHT}` });
    chart.append(svgElement("text", { x: 0, y: 32 }, emptyNote ?? `no ${curve.label} in the history of ${subject}`));
    return chart;
  }
  const x = linearScale(paddedRange(steps), [left, width - right]);
  const y = linearScale(valueRange(values, curve), [height - bottom, top]);
  const bandClasses =
    curve.bands === "grad_dormant"
      ? (filter.grad_dormant ?? []).map((flag) => (flag === true ? "band-grad-dormant" : null))
      : filter.state.map((state) => STATE_BANDS.get(state) ?? null);
  chart.append(
    ...bands(steps, bandClasses, x, y),
    svgElement("rect", {
      class: "plot-frame",
      x: left,
      y: top,
      width: width - left - right,
      height: height - top - bottom,
    }),
    ...axisLabels(x, y),
  );
  if (curve.reference !== undefined) {
    const at = y(curve.reference);
    chart.append(svgElement("line", { class: "reference", x1: left, x2: width - right, y1: at, y2: at }));
  }
  chart.append(svgElement("path", { class: "line", d: linePath(steps, values, x, y) }));
  if (steps.length <= MAX_SNAPSHOTS_WITH_DOTS) chart.append(...dots(steps, values, x, y));
  followPointer(chart, steps, values, x, y);
  return chart;
}

// The band shaded behind a filter's curves at the snapshots where it was dormant or dead.
const STATE_BANDS = new Map([
  [DORMANT, "band-dormant"],
  [DEAD, "band-dead"],
]);

/** A shaded band over each run of snapshots of one class (`null`: no band). */
function bands(steps, classes, x, y) {
  const shaded = [];
  let start = 0;
  for (let index = 1; index <= classes.length; index += 1) {
    if (index < classes.length && classes[index] === classes[start]) continue;
    if (classes[start]) {
      const from = x(midpoint(steps, start - 1, start));
      const to = x(midpoint(steps, index - 1, index));
      const [bottomY, topY] = y.range;
      shaded.push(
        svgElement("rect", {
          class: classes[start],
          x: from,
          y: topY,
          width: Math.max(1, to - from),
          height: bottomY - topY,
        }),
      );
    }
    start = index;
  }
  return shaded;
}

/** Halfway between two snapshots' steps, or the step itself at either end of the run. */
function midpoint(steps, before, after) {
  if (before < 0) return steps[after];
  if (after >= steps.length) return steps[before];
  return (steps[before] + steps[after]) / 2;
}

function axisLabels(x, y) {
  const [left, right] = x.range;
  const [bottom, top] = y.range;
  return [
    svgElement("text", { x: left - 5, y: top + 4, "text-anchor": "end" }, formatNumber(y.domain[1])),
    svgElement("text", { x: left - 5, y: bottom, "text-anchor": "end" }, formatNumber(y.domain[0])),
    svgElement("text", { x: left, y: bottom + 15 }, `step ${formatStep(x.domain[0])}`),
    svgElement("text", { x: right, y: bottom + 15, "text-anchor": "end" }, `step ${formatStep(x.domain[1])}`),
  ];
}

/** The line's path, broken where a snapshot has no value. */
function linePath(steps, values, x, y) {
  let path = "";
  let drawing = false;
  steps.forEach((step, index) => {
    const value = values[index];
    if (!Number.isFinite(value)) {
      drawing = false;
      return;
    }
    path += `${drawing ? "L" : "M"}${x(step).toFixed(1)},${y(value).toFixed(1)}`;
    drawing = true;
  });
  return path;
}

function dots(steps, values, x, y) {
  return steps.flatMap((step, index) => {
    if (!Number.isFinite(values[index])) return [];
    return [svgElement("circle", { class: "dot", cx: x(step), cy: y(values[index]), r: 2 })];
  });
}

/** A cursor on the snapshot nearest the pointer, with its step and value. */
function followPointer(chart, steps, values, x, y) {
  const [bottom, top] = y.range;
  const cursor = svgElement("line", { class: "cursor", y1: top, y2: bottom, visibility: "hidden" });
  const marker = svgElement("circle", { class: "cursor-dot", r: 3.5, visibility: "hidden" });
  const readout = svgElement("text", { class: "readout", x: x.range[1], y: 14, "text-anchor": "end" });
  chart.append(cursor, marker, readout);
  chart.addEventListener("mousemove", (event) => {
    const bounds = chart.getBoundingClientRect();
    const step = x.invert(event.clientX - bounds.left);
    const index = nearestIndex(steps, step);
    const shown = Number.isFinite(values[index]);
    setAttributes(cursor, { x1: x(steps[index]), x2: x(steps[index]), visibility: "visible" });
    setAttributes(marker, {
      cx: x(steps[index]),
      cy: shown ? y(values[index]) : bottom,
      visibility: shown ? "visible" : "hidden",
    });
    readout.textContent = `step ${steps[index]}: ${formatNumber(values[index])}`;
  });
  chart.addEventListener("mouseleave", () => {
    cursor.setAttribute("visibility", "hidden");
    marker.setAttribute("visibility", "hidden");
    readout.textContent = "";
  });
}

function nearestIndex(steps, step) {
  let best = 0;
  steps.forEach((candidate, index) => {
    if (Math.abs(candidate - step) < Math.abs(steps[best] - step)) best = index;
  });
  return best;
}

function paddedRange(steps) {
  const first = steps[0] ?? 0;
  const last = steps.at(-1) ?? first;
  return last > first ? [first, last] : [first - 1, first + 1];
}

/** The values' range, widened to take in the curve's anchors (0, the reference line). */
function valueRange(values, curve) {
  const shown = values.filter(Number.isFinite).concat(curve.include ?? [], curve.reference ?? []);
  const low = Math.min(...shown);
  const high = Math.max(...shown);
  if (high > low) return [low, high];
  return [low - 1, high + 1];
}

function linearScale(domain, range) {
  const [d0, d1] = domain;
  const [r0, r1] = range;
  const scale = (value) => r0 + ((value - d0) / (d1 - d0)) * (r1 - r0);
  scale.invert = (position) => d0 + ((position - r0) / (r1 - r0)) * (d1 - d0);
  scale.domain = domain;
  scale.range = range;
  return scale;
}

// ---- timelines of pictures

// The `filter` answer's blocks of pictures, each drawn from one sprite.
const SPRITE_BLOCKS = ["weights", "maps", "examples", "feature_vis"];

/** Loads each sprite of the filter; a block whose picture fails to load gets `null`. */
async function loadSprites(filter) {
  const blocks = SPRITE_BLOCKS;
  const loaded = await Promise.all(blocks.map((block) => (filter[block] ? loadSprite(filter[block]) : null)));
  return Object.fromEntries(blocks.map((block, index) => [block, loaded[index]]));
}

/** The sprite's URL and size in pixels, once the browser has decoded it. */
async function loadSprite(block) {
  // The URL names the number of frames, so that a sprite that grew is not taken from the cache.
  const url = `${block.url}${block.url.includes("?") ? "&" : "?"}frames=${block.steps.length}`;
  const image = new Image();
  image.src = url;
  try {
    await image.decode();
  } catch {
    return null;
  }
  return { url, width: image.naturalWidth, height: image.naturalHeight };
}

function frames(block, sprite, stateAt, scale = FRAME_SCALE) {
  if (!sprite) return [noPictures("The pictures could not be loaded.")];
  const [tileHeight, tileWidth] = block.tile;
  return block.steps.map((step, index) => {
    const x = (index % block.columns) * tileWidth;
    const y = Math.floor(index / block.columns) * tileHeight;
    return element(
      "figure",
      { className: "frame-cell", style: { "--state-color": stateColor(stateAt(step)) } },
      element("div", { className: "frame", title: `step ${step}`, style: spriteStyle(sprite, x, y, block.tile, scale) }),
      element("figcaption", {}, String(step)),
    );
  });
}

function exampleRows(block, sprite) {
  if (!sprite) return [noPictures("The pictures could not be loaded.")];
  const [tileHeight, tileWidth] = block.tile;
  return block.steps.map((step, run) =>
    element(
      "div",
      { className: "examples-row", dataset: { step: String(step) } },
      element("span", { className: "examples-step" }, `step ${step}`),
      ...Array.from({ length: block.columns }, (_, rank) =>
        element("div", {
          className: "tile",
          title: `step ${step}, example ${rank + 1}`,
          style: spriteStyle(sprite, rank * tileWidth, run * tileHeight, block.tile),
        }),
      ),
    ),
  );
}

/** Styles that show one tile of a sprite, enlarged `scale` times. */
function spriteStyle(sprite, x, y, [tileHeight, tileWidth], scale = FRAME_SCALE) {
  return {
    width: `${tileWidth * scale}px`,
    height: `${tileHeight * scale}px`,
    // A JSON string is a valid CSS string: quotes and backslashes in the URL stay inside it.
    backgroundImage: `url(${JSON.stringify(sprite.url)})`,
    backgroundPosition: `${-x * scale}px ${-y * scale}px`,
    backgroundSize: `${sprite.width * scale}px ${sprite.height * scale}px`,
  };
}

/** Pictures the size of the model's input are shown at their own size from LARGE_PICTURE on. */
function pictureScale(block) {
  return Math.min(...block.tile) >= LARGE_PICTURE ? 1 : FRAME_SCALE;
}

function stateLookup(filter) {
  const byStep = new Map(filter.steps.map((step, index) => [step, filter.state[index]]));
  return (step) => byStep.get(step) ?? UNKNOWN;
}

/** The filter's state at the last snapshot at or before a step (a validation run's step
 * need not be a snapshot's). */
function stateAtOrBefore(filter) {
  return (step) => {
    let found = UNKNOWN;
    filter.steps.forEach((at, index) => {
      if (at <= step) found = filter.state[index];
    });
    return found;
  };
}

function stateColor(code) {
  return (STATES.get(code) ?? STATES.get(UNKNOWN)).color;
}

// ---- data that did not change

function sameLayerData(shown, answer) {
  return (
    shown !== null &&
    shown.run === answer.run &&
    shown.layer === answer.layer &&
    shown.out_channels === answer.out_channels &&
    shown.steps.length === answer.steps.length &&
    shown.maps_steps.length === answer.maps_steps.length &&
    shown.examples_steps.length === answer.examples_steps.length &&
    shown.feature_vis_steps?.length === answer.feature_vis_steps?.length &&
    shown.grad_dormant_fraction?.steps.length === answer.grad_dormant_fraction?.steps.length &&
    shown.frozen === answer.frozen
  );
}

function sameFilterData(shown, answer) {
  const frameCount = (block) => block?.steps.length ?? UNKNOWN;
  return (
    shown !== null &&
    shown.run === answer.run &&
    shown.layer === answer.layer &&
    shown.filter === answer.filter &&
    shown.steps.length === answer.steps.length &&
    SPRITE_BLOCKS.every((block) => frameCount(shown[block]) === frameCount(answer[block]))
  );
}

// ---- URLs

function readUrlState() {
  const state = {};
  for (const entry of hashEntries(parentLocation()?.hash ?? "")) {
    const [key, value] = splitEntry(entry);
    if (key.startsWith(HASH_PREFIX)) state[key.slice(HASH_PREFIX.length)] = value;
  }
  const query = new URLSearchParams(window.location.search);
  for (const key of URL_KEYS) {
    if (query.has(key)) state[key] = query.get(key);
  }
  return state;
}

/** Writes the selection into TensorBoard's hash, keeping every entry that is not ours. */
function writeUrlState(selection) {
  const location = parentLocation();
  if (!location) return;
  const ours = new Set(URL_KEYS.map((key) => HASH_PREFIX + key));
  const kept = hashEntries(location.hash).filter((entry) => !ours.has(splitEntry(entry)[0]));
  const added = URL_KEYS.filter((key) => selection[key] !== null).map(
    (key) => `${HASH_PREFIX}${key}=${encodeURIComponent(String(selection[key]))}`,
  );
  const entries = [...kept, ...added];
  const hash = entries.length ? `#${entries.join("&")}` : "";
  if (hash === location.hash) return;
  try {
    // TensorBoard's router keeps its own history state: leave it as it is.
    const url = `${location.pathname}${location.search}${hash}`;
    window.parent.history.replaceState(window.parent.history.state, "", url);
  } catch {
    // A parent that refuses the change keeps its URL; the page still works.
  }
}

/** Calls `onChange` whenever TensorBoard's address changes its hash (not on our own writes,
 * which replace the address without a hashchange event). */
function followParentAddress(onChange) {
  try {
    window.parent.addEventListener("hashchange", onChange);
  } catch {
    // A parent page of another origin: the page follows its own query string only.
  }
}

/** TensorBoard's location, or null where the parent page is of another origin. */
function parentLocation() {
  try {
    const { hash, pathname, search } = window.parent.location;
    return { hash, pathname, search };
  } catch {
    return null;
  }
}

function hashEntries(hash) {
  return hash.replace(/^#/, "").split("&").filter(Boolean);
}

function splitEntry(entry) {
  const equals = entry.indexOf("=");
  if (equals < 0) return [entry, ""];
  const raw = entry.slice(equals + 1);
  try {
    return [entry.slice(0, equals), decodeURIComponent(raw)];
  } catch {
    return [entry.slice(0, equals), raw];
  }
}

function parseFilter(value) {
  const index = Number(value);
  return value !== null && value !== undefined && value !== "" && Number.isInteger(index) && index >= 0 ? index : null;
}

async function fetchJson(route, parameters) {
  const query = new URLSearchParams(parameters).toString();
  let response;
  try {
    response = await fetch(query ? `${route}?${query}` : route);
  } catch {
    throw new Error("the server does not answer");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(body?.error ?? `HTTP ${response.status}`);
  if (body === null) throw new Error("the answer is not JSON");
  return body;
}

// ---- small helpers

function element(tag, properties = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(properties)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") setStyles(node, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function setStyles(node, styles) {
  for (const [name, value] of Object.entries(styles)) {
    if (name.startsWith("--")) node.style.setProperty(name, value);
    else node.style[name] = value;
  }
}

function svgElement(tag, attributes = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttributes(node, attributes);
  if (text !== undefined) node.textContent = text;
  return node;
}

function setAttributes(node, attributes) {
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
}

function largestValue(rows) {
  let largest = 0;
  for (const row of rows ?? []) {
    for (const value of row) if (Number.isFinite(value) && value > largest) largest = value;
  }
  return largest;
}

function formatNumber(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  if (Math.abs(value) >= 1000) return String(Math.round(value));
  return String(Number(value.toPrecision(3)));
}

function formatStep(step) {
  return String(Math.round(step));
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}
