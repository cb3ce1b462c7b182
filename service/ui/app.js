// The cellmfg page: pick a served model, enter a recipe, see the prediction with its interval, domain check and
// SHAP waterfall; try one change ("what if"); score a CSV batch; design a recipe from wanted values. Plain
// JavaScript, no build step and nothing fetched from elsewhere: lab networks are often offline. Every user action
// makes at most one API call. The catalogue is read from /models when the page opens (or after a token is entered),
// and again when the tab regains focus and once a minute while it is visible, so a model promoted meanwhile appears
// without a reload.
"use strict";

(function () {
  const TOKEN_KEY = "cellmfg.apiToken"; // sessionStorage: kept for this tab only, gone when it closes
  const CATALOGUE_REFRESH_MS = 60000;
  const TABLE_ROWS_SHOWN = 1000; // a 10,000-row batch stays sortable; the download always has every row

  // How the service is asked for each model family: the endpoint and the field naming the dataset. A model outside
  // the two kinds (a lab's own target or feature set) answers alone at POST /predict/{its name}.
  const FAMILIES = {
    electrode: { label: "Electrode: density and mass loading", endpoint: "predict/electrode", field: "chemistry" },
    gdl: { label: "Gas-diffusion layer: tortuosity", endpoint: "predict/gdl", field: "dataset" },
    model: { label: "Single models (other targets or features)", endpoint: null, field: null },
  };
  const FAMILY_OF_TASK = { density: "electrode", mass_loading: "electrode", tortuosity: "gdl" };

  const $ = (id) => document.getElementById(id);
  const state = {
    catalogue: null, // {families: Map(family -> Map(dataset -> entry)), answer}
    entry: null, // the chosen dataset: {family, dataset, models, features}
    baseline: null, // {entry, recipe, answer}: the last predicted recipe, which "what if" varies
    sequence: 0, // answers to superseded requests are dropped
    designSequence: 0, // the same for designs
    batchName: "batch",
    batchFile: null, // the chosen file, sent as it is unless the text was edited after
    batch: null, // {header, rows, sort}: the scored CSV
    downloadUrl: null,
  };

  // ---------------------------------------------------------------------------------------------------------
  // Numbers

  // Below this a value is floating-point residue (a SHAP value of a feature the net ignores comes out as 5.6e-17),
  // far under any physical quantity the page shows: it is shown as 0.
  const NUMERICAL_ZERO = 1e-10;

  /** Four significant digits, without exponent or trailing zeros for the magnitudes seen here. */
  function fmt(value) {
    if (!Number.isFinite(value)) return String(value);
    if (Math.abs(value) < NUMERICAL_ZERO) return "0";
    return String(Number(value.toPrecision(4)));
  }

  // A SHAP value below 1e-12 x the largest of its row, or below 1e-12, is floating-point residue of a feature the
  // net ignores (5.551e-17): drawn and shown as 0, whatever the scale of the target.
  const SHAP_RELATIVE_ZERO = 1e-12;
  const SHAP_ABSOLUTE_ZERO = 1e-12;

  /** `values` (one row's SHAP values) with the residue set to 0. */
  function shapZeroed(values) {
    const largest = Math.max(0, ...values.filter(Number.isFinite).map(Math.abs));
    const floor = Math.max(SHAP_ABSOLUTE_ZERO, SHAP_RELATIVE_ZERO * largest);
    return values.map((v) => (Number.isFinite(v) && Math.abs(v) < floor ? 0 : v));
  }

  function signed(value) {
    const text = fmt(value);
    return value >= NUMERICAL_ZERO ? "+" + text : text;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // ---------------------------------------------------------------------------------------------------------
  // API

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  /** One request to the service, relative to this page (so a reverse proxy's path prefix is kept). */
  async function api(path, { method = "GET", body = undefined, contentType = "application/json",
    accept = "application/json" } = {}) {
    const headers = { Accept: accept };
    if (body !== undefined) headers["Content-Type"] = contentType;
    const sent = token();
    if (sent) headers.Authorization = "Bearer " + sent;
    let response;
    try {
      response = await fetch(new URL("../" + path, window.location.href), {
        method, headers, body: body === undefined ? undefined : (contentType === "application/json" ?
          JSON.stringify(body) : body),
      });
    } catch (error) {
      throw new ApiError(0, "the service did not answer (" + error.message + "); is it running?", []);
    }
    const type = response.headers.get("content-type") || "";
    const payload = type.includes("json") ? await response.json().catch(() => null) : await response.text();
    if (response.status === 401) {
      needToken(sent ? "The token was not accepted by this server. Check it and enter it again." : "");
      throw new ApiError(401, "this server needs an API token", [], true);
    }
    if (!response.ok) {
      const message = payload && payload.error ? payload.error : "HTTP " + response.status;
      const detail = payload && Array.isArray(payload.detail) ? payload.detail.map((d) => d.msg || String(d)) : [];
      throw new ApiError(response.status, message, detail, false, payload);
    }
    return payload;
  }

  class ApiError extends Error {
    constructor(status, message, detail, auth = false, payload = null) {
      super(message);
      this.status = status;
      this.detail = detail;
      this.auth = auth;
      this.payload = payload; // the error answer as sent (a design's 422 carries the reachable range)
    }
  }

  function showError(container, error, what) {
    container.replaceChildren();
    if (error.auth) {
      container.append(el("p", { class: "error", text: "Enter the API token above, then try again." }));
      return;
    }
    const box = el("div", { class: "error", role: "alert" },
      el("p", { text: what + " failed: " + error.message }));
    if (error.detail && error.detail.length) {
      box.append(el("ul", {}, ...error.detail.map((d) => el("li", { text: d }))));
    }
    container.append(box);
  }

  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.className = "status" + (kind ? " " + kind : "");
  }

  // ---------------------------------------------------------------------------------------------------------
  // Token

  function needToken(message) {
    if (message) sessionStorage.removeItem(TOKEN_KEY);
    $("auth").hidden = false;
    $("token-error").textContent = message;
    $("token").setAttribute("aria-invalid", message ? "true" : "false");
    setStatus("This server needs an API token.", "warn");
    $("token").focus();
  }

  async function onToken(event) {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) {
      $("token-error").textContent = "Enter the token first.";
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token-error").textContent = "";
    if (await loadModels()) {
      $("auth").hidden = true;
      $("token").value = "";
      $("family").focus();
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Catalogue (GET /models)

  /** (family, dataset) of a served model: where /models says it answers (older servers: by its target). */
  function placeOf(model) {
    if (Array.isArray(model.endpoints)) {
      for (const kind of ["electrode", "gdl"]) {
        if (model.endpoints.some((e) => e.startsWith("POST /predict/" + kind + " "))) {
          return { family: kind, dataset: model.dataset };
        }
      }
      return { family: "model", dataset: model.name };
    }
    const kind = FAMILY_OF_TASK[model.task];
    return kind ? { family: kind, dataset: model.dataset } : { family: "model", dataset: model.name };
  }

  function endpointOf(entry) {
    const family = FAMILIES[entry.family];
    return family.endpoint || "predict/" + encodeURIComponent(entry.dataset);
  }

  /** Feature ranges where every model of a dataset was trained: what the service's domain check uses too. */
  function sharedFeatures(models) {
    return models[0].features.map((feature, i) => {
      const all = models.map((m) => m.features[i]);
      return {
        name: feature.name, unit: feature.unit,
        min: Math.max(...all.map((f) => f.train_min)), max: Math.min(...all.map((f) => f.train_max)),
        median: all.every((f) => typeof f.train_median === "number") ?
          all.map((f) => f.train_median).sort((a, b) => a - b)[Math.floor(all.length / 2)] : null,
        physicalMin: Math.max(...all.map((f) => f.physical_min)),
        physicalMax: Math.min(...all.map((f) => f.physical_max)),
      };
    });
  }

  function buildCatalogue(answer) {
    const families = new Map();
    for (const model of answer.models) {
      const { family, dataset } = placeOf(model);
      if (!families.has(family)) families.set(family, new Map());
      const datasets = families.get(family);
      if (!datasets.has(dataset)) datasets.set(dataset, { family, dataset, models: [] });
      datasets.get(dataset).models.push(model);
    }
    for (const datasets of families.values()) {
      for (const entry of datasets.values()) entry.features = sharedFeatures(entry.models);
    }
    return { families, answer };
  }

  /** The served models' names and versions: a refresh re-renders only when they changed. */
  function catalogueKey(answer) {
    return answer.models.map((m) => m.name + "@" + m.version).sort().join(",");
  }

  /** Re-read the catalogue quietly (focus, every minute): nothing changes on the page unless the models did. */
  async function refreshModels() {
    if (document.hidden || !state.catalogue) return;
    let answer;
    try {
      answer = await api("models");
    } catch (error) {
      return; // the next refresh or user action says what is wrong
    }
    if (catalogueKey(answer) !== catalogueKey(state.catalogue.answer)) showModels(answer);
  }

  async function loadModels() {
    setStatus("Loading the served models…");
    let answer;
    try {
      answer = await api("models");
    } catch (error) {
      if (!error.auth) setStatus("Could not read the served models: " + error.message, "bad");
      return false;
    }
    showModels(answer);
    return true;
  }

  function showModels(answer) {
    state.catalogue = buildCatalogue(answer);
    const n = answer.models.length;
    const missing = Object.keys(answer.missing || {});
    let text = n + " model" + (n === 1 ? "" : "s") + " served (alias " + answer.alias + ")";
    if (missing.length) text += "; not loaded: " + missing.join(", ");
    setStatus(text + ".", answer.ready ? "ok" : "warn");
    renderFamilies();
    performance.mark("cellmfg:models-shown"); // when the page became usable (read by the browser tests)
  }

  function renderFamilies() {
    const families = state.catalogue.families;
    const select = $("family");
    const previous = select.value;
    const order = Object.keys(FAMILIES).filter((f) => families.has(f));
    select.replaceChildren(...order.map((f) => el("option", { value: f, text: FAMILIES[f].label })));
    if (families.has(previous)) select.value = previous;
    $("pick").hidden = families.size === 0;
    if (families.size === 0) {
      setStatus("No models are served yet: promote some (cellmfg registry promote --all).", "warn");
      return;
    }
    renderDatasets();
  }

  function renderDatasets() {
    const family = $("family").value;
    const datasets = state.catalogue.families.get(family);
    const select = $("dataset");
    const previous = select.value;
    // In the order /models lists a kind's datasets (the paper's first), else as the models came.
    const listed = (state.catalogue.answer.datasets || {})[family] || [];
    const rank = (entry) => (listed.includes(entry.dataset) ? listed.indexOf(entry.dataset) : listed.length);
    const entries = [...datasets.values()].sort((a, b) => rank(a) - rank(b));
    select.replaceChildren(...entries.map((entry) =>
      el("option", { value: entry.dataset, text: datasetLabel(entry) })));
    if (datasets.has(previous)) select.value = previous;
    chooseDataset();
  }

  function datasetLabel(entry) {
    const roles = [...new Set(entry.models.map((m) => m.role))].join(", ");
    return entry.dataset + " (" + roles + ")";
  }

  function chooseDataset() {
    const entry = state.catalogue.families.get($("family").value).get($("dataset").value);
    // The same dataset again (the catalogue re-read after a token was entered): keep what was typed.
    const same = state.entry && state.entry.family === entry.family && state.entry.dataset === entry.dataset;
    const typed = same ? Object.fromEntries(state.entry.features.map((f) => [f.name, $("f-" + f.name).value])) : {};
    state.entry = entry;
    state.baseline = null;
    renderModelInfo(entry);
    renderForm(entry, typed);
    $("single").hidden = false;
    $("batch").hidden = false;
    $("whatif").hidden = true;
    $("result-body").replaceChildren(el("p", { class: "hint", text: "Enter a recipe and press Predict." }));
    $("batch-columns").textContent = entry.features.map((f) => f.name).join(", ");
    clearBatch();
    setUpDesign(entry, same);
    setUpPlan(entry, same);
    renderLive(entry);
    renderChallenger(entry);
  }

  // ---------------------------------------------------------------------------------------------------------
  // The prediction ledger: record what the QC lab measured for a predicted recipe; live accuracy per model

  /** "Record measurement": one field per target of the answer, posted to /outcomes with the row's prediction_id. */
  function recordForm(entry, answer) {
    const prediction = answer.predictions[0];
    const targets = targetsOf(entry, answer).filter((t) => typeof prediction[t.column] === "number");
    const status = el("p", { class: "hint", id: "record-status", "aria-live": "polite" });
    const fields = targets.map((t) => el("label", { class: "field" },
      t.task + " measured [" + t.unit + "] ",
      el("input", { type: "number", step: "any", id: "measured-" + t.column, "data-target": t.column })));
    const form = el("form", { id: "record-form", class: "record", novalidate: "" },
      el("h3", { text: "Record measurement" }),
      el("p", { class: "hint" }, "Prediction id ", el("code", { id: "prediction-id", text: prediction.prediction_id }),
        ": enter what the lab measured for this recipe (blank: not measured)."),
      ...fields, el("div", { class: "row actions" }, el("button", { type: "submit", id: "record", text: "Record" })),
      status);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const values = {};
      for (const t of targets) {
        const text = $("measured-" + t.column).value.trim();
        if (text !== "") values[t.column] = Number(text);
      }
      if (Object.keys(values).length === 0) {
        status.textContent = "Enter at least one measured value.";
        return;
      }
      try {
        const receipt = await api("outcomes", { method: "POST",
          body: { outcomes: [{ prediction_id: prediction.prediction_id, values }] } });
        status.textContent = receipt.written ? "Recorded." : "Already recorded with these values.";
        renderLive(entry, true);
      } catch (error) {
        showError(status, error, "Recording the measurement");
      }
    });
    return form;
  }

  /** Each model of the dataset: its live figures for the served version, against the contract's test band. From
   * the models the page loaded (no extra call), or fresh from GET /models after a measurement was recorded. */
  async function renderLive(entry, fresh = false) {
    const section = $("live");
    const body = $("live-body");
    let models = entry.models;
    if (fresh) {
      try {
        const names = new Set(entry.models.map((m) => m.name));
        models = (await api("models")).models.filter((m) => names.has(m.name));
      } catch (error) {
        return; // the figures shown stay; the models view says what is wrong
      }
    }
    models = models.filter((m) => m.live);
    section.hidden = models.length === 0;
    const percent = (v) => (v === null || v === undefined ? "–" : fmt(v * 100) + " %");
    body.replaceChildren(el("table", { class: "live" },
      el("thead", {}, el("tr", {}, ...["model", "version", "outcomes", "MAPE, last 50", "test band (upper)",
        "interval coverage", "in domain", "drift (share outside range)", "MAPE since promotion"]
        .map((h) => el("th", { text: h })))),
      el("tbody", {}, ...models.map((m) => {
        const live = m.live;
        const mape = live.mape_last_n;
        const above = mape.mape_pct !== null && mape.mape_pct > 1.5 * live.test_mape_upper_pct;
        const drifted = Object.entries(live.drift).filter(([, d]) => d.share_outside > 0)
          .map(([f, d]) => f + " " + percent(d.share_outside)).join(", ");
        return el("tr", { "data-model": m.name, class: above ? "warn" : "" },
          el("td", {}, el("code", { text: m.name })), el("td", { text: live.version }),
          el("td", { text: String(live.n_outcomes) }),
          el("td", { text: mape.mape_pct === null ? "–" : fmt(mape.mape_pct) + " %" +
            (mape.interval_pct ? " (" + fmt(mape.interval_pct[0]) + " – " + fmt(mape.interval_pct[1]) + ")" : "") +
            (above ? " ▲ above 1.5 × the band" : "") }),
          el("td", { text: fmt(live.test_mape_upper_pct) + " %" }),
          el("td", { text: percent(live.interval_coverage) }), el("td", { text: percent(live.share_in_domain) }),
          el("td", { text: drifted || "none" }), el("td", { text: sincePromotionText(live.mape_since_promotion) }));
      }))), liveCharts(models));
  }

  /** "12.3 % (10.1 – 14.9), 40 outcomes since 2026-05-01 08:00 UTC": the served version's MAPE since it began
   * answering under its alias (the ledger's record of its promotion), or "–" before it has a measured answer. */
  function sincePromotionText(since) {
    if (!since || since.mape_pct === null) return "–";
    const interval = since.interval_pct ? " (" + fmt(since.interval_pct[0]) + " – " + fmt(since.interval_pct[1]) +
      ")" : "";
    return fmt(since.mape_pct) + " %" + interval + ", " + since.n + " outcomes since " + utcText(Date.parse(since.since));
  }

  function utcText(milliseconds) {
    return new Date(milliseconds).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  // ---------------------------------------------------------------------------------------------------------
  // Live accuracy over time (inline SVG): one chart per served model of the dataset

  function liveCharts(models) {
    return el("div", { class: "live-charts" }, ...models.map((m) => {
      const series = m.live.error_series;
      const name = el("code", { text: m.name });
      if (series.ape_pct.length === 0) {
        return el("p", { class: "hint", "data-model": m.name }, name, " v" + m.live.version +
          ": no measured outcome for this version yet.");
      }
      return el("figure", { class: "live-chart-figure", "data-model": m.name }, liveErrorChart(m),
        el("figcaption", {}, name, " v" + m.live.version + ": each measured row's absolute percentage error at " +
          "the time it was predicted (dots; the last " + series.ape_pct.length + " outcomes), their MAPE over " +
          series.window + " in a row (line), the test-MAPE band of the model's contract (shaded) and the alert " +
          "threshold, 1.5 × its upper end (dashed)."));
    }));
  }

  /** The test band: mean ± 2 sd of the test MAPE over repeated splits when the contract has them (the upper end
   * is live.test_mape_upper_pct, as the alert uses it), else from the one split's MAPE up to that upper end. */
  function testBand(m) {
    const metrics = m.metrics || {};
    const upper = m.live.test_mape_upper_pct;
    const spread = typeof metrics.test_mape_pct_mean === "number" && typeof metrics.test_mape_pct_std === "number";
    const lower = spread ? Math.max(0, metrics.test_mape_pct_mean - 2 * metrics.test_mape_pct_std) :
      Math.min(m.test_mape_pct, upper);
    return [lower, upper];
  }

  function liveErrorChart(m) {
    const series = m.live.error_series;
    const n = series.ape_pct.length;
    const [lower, upper] = testBand(m);
    const alert = 1.5 * upper;
    const width = 640;
    const height = 190;
    const left = 52;
    const right = 86;
    const top = 10;
    const bottom = 30;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    // The scale shows the alert line and the whole rolling MAPE; a single error above it is drawn at the top edge
    // (marked "clipped"), so one gross outlier does not flatten everything else.
    const yMax = Math.max(alert * 1.2, ...series.rolling_mape_pct) * 1.05;
    const t0 = series.predicted_at[0];
    const t1 = series.predicted_at[n - 1];
    const x = (t) => left + (t1 === t0 ? plotW / 2 : ((t - t0) / (t1 - t0)) * plotW);
    const y = (v) => top + plotH - (Math.min(v, yMax) / yMax) * plotH;
    const rolling = series.rolling_mape_pct[n - 1];
    const summary = m.name + ": " + n + " outcomes from " + utcText(t0 * 1000) + " to " + utcText(t1 * 1000) +
      "; rolling MAPE now " + fmt(rolling) + " %, test band " + fmt(lower) + " – " + fmt(upper) + " %, alert above " +
      fmt(alert) + " %";
    const root = svg("svg", { viewBox: "0 0 " + width + " " + height, class: "live-chart", role: "img",
      "aria-label": "Error over time for " + summary, "data-n": String(n), "data-rolling": String(rolling),
      "data-band": lower + "," + upper });
    root.append(svg("title", {}, "Error over time: " + summary));
    root.append(svg("rect", { x: left, y: y(upper), width: plotW, height: Math.max(1, y(lower) - y(upper)),
      class: "band" }));
    root.append(svg("line", { x1: left, x2: left + plotW, y1: y(alert), y2: y(alert), class: "alert" }));
    const label = (v, text, cls) => root.append(svg("text", { x: left + plotW + 6, y: y(v) + 4, class: cls }, text));
    label(upper, "band " + fmt(upper) + " %", "tick");
    label(alert, "alert " + fmt(alert) + " %", "tick alert-label");
    series.ape_pct.forEach((v, i) => {
      const dot = svg("circle", { cx: x(series.predicted_at[i]), cy: y(v), r: 2.5,
        class: v > yMax ? "ape clipped" : "ape" });
      dot.append(svg("title", {}, utcText(series.predicted_at[i] * 1000) + ": " + fmt(v) + " %"));
      root.append(dot);
    });
    root.append(svg("polyline", { class: "rolling", points: series.rolling_mape_pct.map((v, i) =>
      x(series.predicted_at[i]).toFixed(1) + "," + y(v).toFixed(1)).join(" ") }));
    // Axes: 0 and the top of the scale in %, the first and last prediction time.
    root.append(svg("line", { x1: left, x2: left, y1: top, y2: top + plotH, class: "axis" }));
    root.append(svg("line", { x1: left, x2: left + plotW, y1: top + plotH, y2: top + plotH, class: "axis" }));
    for (const v of [0, yMax / 1.05]) {
      root.append(svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, fmt(v) + " %"));
    }
    // Seconds too when the series spans less than two hours (a test run, a burst of measurements).
    const when = (t) => (t1 - t0 < 7200 ? new Date(t * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC" :
      utcText(t * 1000));
    root.append(svg("text", { x: left, y: height - 8, class: "tick" }, when(t0)));
    if (t1 !== t0) {
      root.append(svg("text", { x: left + plotW, y: height - 8, "text-anchor": "end", class: "tick" }, when(t1)));
    }
    return root;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Champion and challenger: each model of the dataset with a challenger scored in shadow (GET
  // /models/{name}/challenge), judged on the measured rows both predicted

  /** The panel, when the dataset's models are recorded in the ledger (they have a `live` block): a button that
   * asks GET /models/{name}/challenge for each model (choosing a dataset calls nothing: the page asks only when
   * told to), and per challenger a "Promote challenger" button. Promotion changes what the line is answered with:
   * it needs the API token (POST /models/{name}/challenge/promote answers 403 on a server without one), so the
   * button is enabled only while this page holds the token. */
  function renderChallenger(entry) {
    const section = $("challenger");
    section.hidden = !entry.models.some((m) => m.live);
    const button = el("button", { type: "button", id: "challenger-compare", text: "Compare with the challenger" });
    button.addEventListener("click", () => compareChallenger(entry));
    $("challenger-body").replaceChildren(button);
  }

  /** One row per model that has a challenger: n, each MAPE, the paired difference with its interval, the verdict
   * and the promote button; a model without one answers 404 and is left out. `message` (a promotion's outcome) is
   * shown below the table. */
  async function compareChallenger(entry, message) {
    const body = $("challenger-body");
    const found = [];
    for (const m of entry.models) {
      try {
        found.push(await api("models/" + encodeURIComponent(m.name) + "/challenge"));
      } catch (error) {
        if (error.status !== 404) {
          showError(body, error, "Reading " + m.name + "'s challenger");
          return;
        }
      }
    }
    if (state.entry !== entry) return; // another dataset was chosen meanwhile
    const again = el("button", { type: "button", id: "challenger-compare", text: "Compare again" });
    again.addEventListener("click", () => compareChallenger(entry));
    if (found.length === 0) {
      body.replaceChildren(el("p", { class: "hint", text: "No challenger is scored in shadow for this dataset." }),
        again, message || null);
      return;
    }
    const mape = (v) => (v === null || v === undefined ? "–" : fmt(v) + " %");
    const holdsToken = token() !== "";
    const outcome = el("div", { id: "challenger-outcome", "aria-live": "polite" });
    body.replaceChildren(el("table", { class: "live challenger" },
      el("thead", {}, el("tr", {}, ...["model", "champion", "challenger", "outcomes (groups)", "MAPE champion",
        "MAPE challenger", "difference (95 % interval)", "verdict", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...found.map((c) => {
        const promote = el("button", { type: "button", class: "challenger-promote", "data-model": c.model,
          disabled: !holdsToken, text: "Promote challenger",
          title: holdsToken ? "Make v" + c.challenger.version + " champion if the gate agrees" :
            "Promotion needs the server's API token, and this page holds none" });
        promote.addEventListener("click", () => promoteChallenger(entry, c, outcome, null));
        return el("tr", { "data-model": c.model, class: c.promotable ? "better" : "" },
          el("td", {}, el("code", { text: c.model })), el("td", { text: "v" + c.champion.version }),
          el("td", { text: "v" + c.challenger.version }), el("td", { text: c.n + " (" + c.n_groups + ")" }),
          el("td", { text: mape(c.champion_mape_pct) }), el("td", { text: mape(c.challenger_mape_pct) }),
          el("td", { text: c.difference_pct === null ? "–" : signed(c.difference_pct) + " points" +
            (c.interval_pct ? " (" + signed(c.interval_pct[0]) + " – " + signed(c.interval_pct[1]) + ")" : "") }),
          el("td", { text: (c.promotable ? "better: promotable" : "not shown better") + ". " + c.reason }),
          el("td", {}, promote));
      }))),
      el("p", { class: "hint", text: holdsToken ?
        "Promote applies the gate of `cellmfg registry promote --challenger NAME`: only a challenger whose " +
        "interval lies below 0, unless you override it with a reason (recorded on the version)." :
        "Promotion needs the server's API token (CELLMFG_API_TOKEN), and this page holds none: on a server without " +
        "one, promote with `cellmfg registry promote --challenger NAME` (registry access)." }),
      again, outcome);
    if (message) outcome.append(message);
  }

  /** POST /models/{name}/challenge/promote: the gate alone, or an override with its reason. A refusal by the gate
   * (409) says why and offers the override; a promotion re-reads the comparisons (the challenger is gone). */
  async function promoteChallenger(entry, c, outcome, reason) {
    const buttons = $("challenger-body").querySelectorAll("button");
    for (const b of buttons) b.disabled = true;
    const path = "models/" + encodeURIComponent(c.model) + "/challenge/promote";
    try {
      const done = await api(path, { method: "POST", body: reason === null ? { override: false } :
        { override: true, reason } });
      const how = done.promoted_by === "override" ? "override: " + done.override_reason : done.reason;
      await compareChallenger(entry, el("p", { class: "promoted", role: "status", text: done.model + ": v" +
        done.champion_version + " is champion (previous v" + done.previous_version + "; " + how + "). The " +
        "service answers with it " + done.served + "." }));
    } catch (error) {
      for (const b of buttons) b.disabled = b.classList.contains("challenger-promote") && token() === "";
      if (error.auth) {
        showError(outcome, error, "Promoting");
        return;
      }
      // The service's message says what was refused and why (the gate's n, difference and interval).
      outcome.replaceChildren(el("p", { class: "error", role: "alert", text: error.message }));
      if (error.payload && error.payload.overridable) outcome.append(overrideForm(entry, c, outcome));
    }
  }

  /** Promote anyway: enabled once a reason is typed (it is recorded on the version as an MLflow tag). */
  function overrideForm(entry, c, outcome) {
    const input = el("input", { id: "override-reason", type: "text", maxlength: 1000, autocomplete: "off",
      placeholder: "e.g. binder lot 7 is the new normal" });
    const submit = el("button", { type: "submit", id: "override-submit", disabled: true,
      text: "Promote v" + c.challenger.version + " anyway" });
    input.addEventListener("input", () => { submit.disabled = input.value.trim() === ""; });
    const form = el("form", { class: "override", autocomplete: "off" },
      el("label", { for: "override-reason", text: "Override the gate, because " }), input, submit);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.value.trim()) promoteChallenger(entry, c, outcome, input.value.trim());
    });
    return form;
  }

  function renderModelInfo(entry) {
    const body = $("model-info").tBodies[0];
    body.replaceChildren(...entry.models.map((m) => el("tr", {},
      el("td", { text: m.target.task + " [" + m.target.unit + "]" }), el("td", {}, el("code", { text: m.name })),
      el("td", { text: m.version }), el("td", { text: m.alias }), el("td", { text: m.role }),
      el("td", { text: fmt(m.test_mape_pct) + " %" }))));
  }

  // ---------------------------------------------------------------------------------------------------------
  // Recipe form

  /** Where the form starts: the training rows' median recipe, kept inside the range every model was trained on;
   * the middle of that range for models whose contract records no median. */
  function startValue(feature) {
    if (feature.median === null) return (feature.min + feature.max) / 2;
    return Math.min(feature.max, Math.max(feature.min, feature.median));
  }

  function rangeText(feature) {
    return feature.min === feature.max ? fmt(feature.min) + " " + feature.unit :
      fmt(feature.min) + " – " + fmt(feature.max) + " " + feature.unit;
  }

  function renderForm(entry, typed) {
    const fields = entry.features.map((f) => {
      const id = "f-" + f.name;
      const input = el("input", {
        id, name: f.name, type: "number", step: "any", inputmode: "decimal", required: true,
        "aria-describedby": "r-" + f.name + " w-" + f.name,
      });
      input.value = typed[f.name] !== undefined ? typed[f.name] : String(Number(startValue(f).toPrecision(6)));
      input.addEventListener("input", () => checkField(f, input));
      const wrap = el("div", { class: "feature", "data-feature": f.name },
        el("label", { for: id }, el("span", { class: "name", text: f.name }), " ",
          el("span", { class: "unit", text: "[" + f.unit + "]" })),
        input,
        el("span", { id: "r-" + f.name, class: "range", text: "trained on " + rangeText(f) }),
        el("span", { id: "w-" + f.name, class: "warning" }));
      return wrap;
    });
    $("fields").replaceChildren(...fields);
    $("recipe-hint").textContent = entry.features.every((f) => f.median !== null) ?
      "Prefilled with the median recipe of the training data." : "Prefilled with the middle of each training range.";
    entry.features.forEach((f) => checkField(f, $("f-" + f.name)));
  }

  /** Marks the field; returns "ok", "outside" (allowed, flagged) or "invalid" (not sent). */
  function checkField(feature, input) {
    const warning = $("w-" + feature.name);
    const wrap = input.closest(".feature");
    const text = input.value.trim();
    const value = Number(text);
    let verdict = "ok";
    let message = "";
    if (text === "" || !Number.isFinite(value)) {
      verdict = "invalid";
      message = "Enter a number in " + feature.unit + ".";
    } else if (value < feature.physicalMin || value > feature.physicalMax) {
      verdict = "invalid";
      message = "Not physically possible: allowed " + fmt(feature.physicalMin) + " – " +
        fmt(feature.physicalMax) + " " + feature.unit + ".";
    } else if (value < feature.min || value > feature.max) {
      verdict = "outside";
      message = "Outside the training range (" + rangeText(feature) + "): the model extrapolates here.";
    }
    warning.textContent = message;
    wrap.classList.toggle("outside", verdict === "outside");
    wrap.classList.toggle("invalid", verdict === "invalid");
    input.setAttribute("aria-invalid", verdict === "ok" ? "false" : "true");
    return verdict;
  }

  function readRecipe(entry) {
    const recipe = {};
    let firstBad = null;
    for (const f of entry.features) {
      const input = $("f-" + f.name);
      if (checkField(f, input) === "invalid" && !firstBad) firstBad = input;
      recipe[f.name] = Number(input.value);
    }
    if (firstBad) {
      firstBad.focus();
      return null;
    }
    return recipe;
  }

  function requestBody(entry, rows, extras) {
    const field = FAMILIES[entry.family].field;
    return Object.assign(field ? { [field]: entry.dataset, rows } : { rows }, extras);
  }

  async function onPredict(event) {
    event.preventDefault();
    const entry = state.entry;
    const recipe = readRecipe(entry);
    const body = $("result-body");
    if (!recipe) {
      body.replaceChildren(el("p", { class: "error", role: "alert",
        text: "Fix the marked fields first: every value must be a physically possible number." }));
      return;
    }
    const ticket = ++state.sequence;
    $("predict").disabled = true;
    body.setAttribute("aria-busy", "true");
    try {
      const answer = await api(endpointOf(entry),
        { method: "POST", body: requestBody(entry, [recipe], { explain: true, interval: true }) });
      if (ticket !== state.sequence) return;
      state.baseline = { entry, recipe, answer };
      body.replaceChildren(...renderAnswer(entry, recipe, answer, null));
      if (answer.predictions[0].prediction_id) body.append(recordForm(entry, answer));
      setUpWhatIf();
    } catch (error) {
      if (ticket === state.sequence) showError(body, error, "The prediction");
    } finally {
      $("predict").disabled = false;
      body.removeAttribute("aria-busy");
    }
  }

  function onReset() {
    const entry = state.entry;
    entry.features.forEach((f) => {
      const input = $("f-" + f.name);
      input.value = String(Number(startValue(f).toPrecision(6)));
      checkField(f, input);
    });
  }

  // ---------------------------------------------------------------------------------------------------------
  // The answer

  function targetsOf(entry, answer) {
    // Targets in the order /models lists them, with the model that answered (the answer's, after a hot swap).
    return entry.models.map((m) => {
      const ref = answer.models[m.target.task] || { name: m.name, version: m.version, alias: m.alias };
      const info = entry.models.find((x) => x.name === ref.name && x.version === ref.version);
      const coverage = (info || m).conformal && (info || m).conformal.coverage;
      return { task: m.target.task, column: m.target.column, unit: m.target.unit, ref,
        mape: info ? info.test_mape_pct : null, coverage: Number.isFinite(coverage) ? coverage : null };
    });
  }

  function verdictNode(prediction) {
    if (prediction.in_domain) {
      return el("p", { class: "verdict ok", "data-in-domain": "true" },
        el("strong", { text: "Inside the training range" }), " of every feature.");
    }
    const items = prediction.out_of_domain.map((o) => el("li", { "data-feature": o.feature },
      el("code", { text: o.feature }), " = " + fmt(o.value) + " (trained on " +
        (o.min === o.max ? fmt(o.min) : fmt(o.min) + " – " + fmt(o.max)) + ")"));
    return el("div", { class: "verdict warn", "data-in-domain": "false", role: "alert" },
      el("p", {}, el("strong", { text: "Outside the training range: " }),
        prediction.out_of_domain.map((o) => o.feature).join(", ") +
        ". The model extrapolates; outside their range such nets were off by 50–80 %."),
      el("ul", {}, ...items));
  }

  /** The answer for one recipe; `before` is the baseline answer when this is a "what if". */
  function renderAnswer(entry, recipe, answer, before) {
    const prediction = answer.predictions[0];
    const nodes = [verdictNode(prediction)];
    const cards = el("div", { class: "targets" });
    for (const t of targetsOf(entry, answer)) {
      const value = prediction[t.column];
      if (typeof value !== "number") continue; // a target this answer does not carry
      const card = el("article", { class: "target", "data-target": t.column },
        el("h3", {}, t.task + " ", el("span", { class: "unit", text: "[" + t.unit + "]" })));
      const unit = t.unit === "1" ? "" : t.unit; // a dimensionless target (tortuosity) shows no unit
      const line = el("p", { class: "value" },
        el("span", { class: "prediction", "data-value": String(value), text: fmt(value) }),
        " ", el("span", { class: "unit", text: unit }));
      if (before) {
        const old = before.predictions[0][t.column];
        const delta = value - old;
        line.append(" ", el("span", { class: "delta " + (delta > 0 ? "up" : delta < 0 ? "down" : "same"),
          "data-value": String(delta),
          text: (delta > 0 ? "▲ " : delta < 0 ? "▼ " : "") + signed(delta) + " from " + fmt(old) }));
      }
      card.append(line);
      const interval = prediction.interval && prediction.interval[t.column];
      if (interval) {
        const share = t.coverage === null ? "" : fmt(t.coverage * 100) + " % ";
        card.append(el("p", { class: "interval" }, share + "prediction interval ",
          el("span", { class: "interval-low", "data-value": String(interval[0]), text: fmt(interval[0]) }), " – ",
          el("span", { class: "interval-high", "data-value": String(interval[1]), text: fmt(interval[1]) }),
          unit ? " " + unit : ""));
      }
      card.append(el("p", { class: "model-ref" }, el("code", { text: t.ref.name }),
        " v" + t.ref.version + " @" + t.ref.alias +
        (t.mape === null ? "" : " · test MAPE " + fmt(t.mape) + " %")));
      const explanation = prediction.explanation && prediction.explanation[t.column];
      if (explanation) card.append(waterfall(t, explanation, value, recipe, entry));
      cards.append(card);
    }
    nodes.push(cards);
    return nodes;
  }

  // ---------------------------------------------------------------------------------------------------------
  // SHAP waterfall (inline SVG): base value, one bar per feature (largest effect first), prediction

  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function waterfall(target, explanation, prediction, recipe, entry) {
    const base = explanation.base_value;
    const features = Object.keys(explanation.contributions);
    const cleaned = shapZeroed(features.map((f) => explanation.contributions[f]));
    // `exact` is the API's value (kept in data-contribution); `contribution` the one drawn and shown.
    const steps = features.map((feature, i) => ({ feature, contribution: cleaned[i],
      exact: explanation.contributions[feature] }))
      .sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution));
    const units = Object.fromEntries(entry.features.map((f) => [f.name, f.unit]));
    const labels = steps.map((s) => s.feature + " = " + fmt(recipe[s.feature]) +
      (units[s.feature] ? " " + units[s.feature] : ""));
    const numbers = [fmt(base), fmt(prediction), ...steps.map((s) => signed(s.contribution))];
    // Column widths from the longest text (about 7.4 px per character at 13 px), so nothing is cut off.
    const charW = 7.4;
    const rowH = 26;
    const labelW = Math.ceil(Math.max(200, ...labels.map((t) => t.length * charW)) + 12);
    const valueW = Math.ceil(Math.max(...numbers.map((t) => t.length)) * charW + 14);
    const plotW = 380;
    const width = labelW + plotW + valueW;
    const height = rowH * (steps.length + 2) + 22;
    let running = base;
    const points = [base];
    for (const step of steps) {
      step.start = running;
      running += step.contribution;
      step.end = running;
      points.push(running);
    }
    points.push(prediction);
    let lo = Math.min(...points);
    let hi = Math.max(...points);
    const pad = (hi - lo) * 0.05 || Math.abs(hi) * 0.01 || 1;
    lo -= pad;
    hi += pad;
    const x = (v) => labelW + ((v - lo) / (hi - lo)) * plotW;

    const summary = target.task + ": base value " + fmt(base) + ", " + steps.map((s) =>
      s.feature + " " + signed(s.contribution)).join(", ") + ", prediction " + fmt(prediction) + " " + target.unit;
    const root = svg("svg", { viewBox: "0 0 " + width + " " + height, class: "waterfall", role: "img",
      "aria-label": "SHAP waterfall for " + summary, "data-base": String(base), "data-prediction":
        String(prediction) });
    root.append(svg("title", {}, "SHAP waterfall: " + summary));

    const row = (i) => 4 + i * rowH;
    const label = (i, text, cls) => root.append(svg("text", { x: labelW - 8, y: row(i) + rowH / 2 + 4,
      "text-anchor": "end", class: cls || "label" }, text));
    // Base value row
    label(0, "base value (mean prediction)");
    root.append(svg("line", { x1: x(base), x2: x(base), y1: row(0) + 3, y2: row(steps.length + 1) + rowH - 3,
      class: "baseline" }));
    root.append(svg("text", { x: width - valueW + 6, y: row(0) + rowH / 2 + 4, class: "num" }, fmt(base)));
    steps.forEach((s, k) => {
      const i = k + 1;
      label(i, labels[k]);
      const left = x(Math.min(s.start, s.end));
      const barW = Math.max(1.5, Math.abs(x(s.end) - x(s.start)));
      const bar = svg("rect", { x: left, y: row(i) + 5, width: barW, height: rowH - 10, rx: 2,
        class: s.contribution >= 0 ? "bar up" : "bar down", "data-feature": s.feature,
        "data-contribution": String(s.exact) });
      bar.append(svg("title", {}, s.feature + ": " + signed(s.contribution) + " " + target.unit));
      root.append(bar);
      root.append(svg("line", { x1: x(s.end), x2: x(s.end), y1: row(i) + rowH - 5, y2: row(i + 1) + 5,
        class: "connector" }));
      root.append(svg("text", { x: width - valueW + 6, y: row(i) + rowH / 2 + 4, class: "num" },
        signed(s.contribution)));
    });
    const last = steps.length + 1;
    label(last, "prediction", "label strong");
    root.append(svg("circle", { cx: x(prediction), cy: row(last) + rowH / 2, r: 6, class: "final" }));
    root.append(svg("text", { x: width - valueW + 6, y: row(last) + rowH / 2 + 4, class: "num strong" },
      fmt(prediction)));
    // Axis
    const axisY = row(last + 1) + 4;
    root.append(svg("line", { x1: labelW, x2: labelW + plotW, y1: axisY, y2: axisY, class: "axis" }));
    for (const v of [lo + pad, (lo + hi) / 2, hi - pad]) {
      root.append(svg("text", { x: x(v), y: axisY + 14, "text-anchor": "middle", class: "tick" }, fmt(v)));
    }
    return el("figure", { class: "waterfall-figure" }, root,
      el("figcaption", { text: "What moves " + target.task + " away from the average prediction: red pushes " +
        "it up, blue down (SHAP values, " + target.unit + ")." }));
  }

  // ---------------------------------------------------------------------------------------------------------
  // What if: one parameter of the predicted recipe changed, one call per change

  function whatIfBounds(feature, value) {
    const span = feature.max - feature.min;
    let lo = feature.min - span * 0.25;
    let hi = feature.max + span * 0.25;
    if (span === 0) {
      lo = feature.min * 0.8;
      hi = feature.max * 1.2 || 1;
    }
    lo = Math.max(feature.physicalMin, Math.min(lo, value));
    hi = Math.min(feature.physicalMax, Math.max(hi, value));
    return { lo, hi, step: (hi - lo) / 200 || "any" };
  }

  function setUpWhatIf() {
    const entry = state.entry;
    const select = $("whatif-feature");
    const previous = select.value;
    select.replaceChildren(...entry.features.map((f) => el("option", { value: f.name,
      text: f.name + " [" + f.unit + "]" })));
    if (entry.features.some((f) => f.name === previous)) select.value = previous;
    $("whatif").hidden = false;
    $("whatif-body").replaceChildren(el("p", { class: "hint",
      text: "Move the slider or type a value; the recipe above stays as it is." }));
    syncWhatIf();
  }

  function whatIfFeature() {
    return state.entry.features.find((f) => f.name === $("whatif-feature").value);
  }

  function syncWhatIf() {
    const feature = whatIfFeature();
    const value = state.baseline.recipe[feature.name];
    const { lo, hi, step } = whatIfBounds(feature, value);
    const slider = $("whatif-slider");
    slider.min = String(lo);
    slider.max = String(hi);
    slider.step = String(step);
    slider.value = String(value);
    slider.setAttribute("aria-valuetext", fmt(value) + " " + feature.unit);
    $("whatif-value").value = String(value);
    $("whatif-range").textContent = "(trained on " + rangeText(feature) + ")";
  }

  async function runWhatIf(value) {
    const base = state.baseline;
    const feature = whatIfFeature();
    const body = $("whatif-body");
    if (!Number.isFinite(value) || value < feature.physicalMin || value > feature.physicalMax) {
      body.replaceChildren(el("p", { class: "error", role: "alert", text: "Enter a number in " +
        fmt(feature.physicalMin) + " – " + fmt(feature.physicalMax) + " " + feature.unit + "." }));
      return;
    }
    const recipe = Object.assign({}, base.recipe, { [feature.name]: value });
    const ticket = ++state.sequence;
    body.setAttribute("aria-busy", "true");
    try {
      const answer = await api(endpointOf(base.entry),
        { method: "POST", body: requestBody(base.entry, [recipe], { interval: true }) });
      if (ticket !== state.sequence) return;
      body.replaceChildren(el("p", { class: "whatif-recipe" }, "With ", el("code", { text: feature.name }),
        " = " + fmt(value) + " " + feature.unit + " instead of " + fmt(base.recipe[feature.name]) + ":"),
      ...renderAnswer(base.entry, recipe, answer, base.answer));
    } catch (error) {
      if (ticket === state.sequence) showError(body, error, "The what-if prediction");
    } finally {
      body.removeAttribute("aria-busy");
    }
  }

  function onWhatIfSlider() {
    const value = Number($("whatif-slider").value);
    $("whatif-value").value = String(Number(value.toPrecision(6)));
    $("whatif-slider").setAttribute("aria-valuetext", fmt(value) + " " + whatIfFeature().unit);
  }

  function onWhatIfKeep() {
    const feature = whatIfFeature();
    const input = $("f-" + feature.name);
    input.value = $("whatif-value").value;
    checkField(feature, input);
    input.focus();
  }

  // ---------------------------------------------------------------------------------------------------------
  // Batch: CSV in, scored CSV out

  /** RFC 4180 CSV (quotes, CRLF, a leading BOM) -> array of rows of strings; empty lines dropped. */
  function parseCsv(text) {
    const rows = [];
    let row = [];
    let cell = "";
    let quoted = false;
    let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
    for (; i < text.length; i++) {
      const c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') {
          cell += '"';
          i++;
        } else if (c === '"') {
          quoted = false;
        } else {
          cell += c;
        }
      } else if (c === '"') {
        quoted = true;
      } else if (c === ",") {
        row.push(cell);
        cell = "";
      } else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") i++;
        row.push(cell);
        rows.push(row);
        row = [];
        cell = "";
      } else {
        cell += c;
      }
    }
    if (cell !== "" || row.length) {
      row.push(cell);
      rows.push(row);
    }
    return rows.filter((r) => r.length > 1 || r[0].trim() !== "");
  }

  function clearBatch() {
    $("batch-table").tHead.replaceChildren();
    $("batch-table").tBodies[0].replaceChildren();
    $("batch-summary").replaceChildren();
    $("batch-download").hidden = true;
    if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
    state.downloadUrl = null;
  }

  function onBatchFile() {
    const file = $("batch-file").files[0];
    if (!file) return;
    state.batchName = file.name.replace(/\.[^.]*$/, "") || "batch";
    const reader = new FileReader();
    reader.onload = () => {
      const text = String(reader.result);
      $("batch-text").value = text;
      // The file itself is sent, byte for byte: the service checks its encoding and names any problem.
      state.batchFile = file;
      const lines = Math.max(0, parseCsv(text).length - 1);
      $("batch-summary").textContent = "Read " + file.name + ": " + lines + " row" + (lines === 1 ? "" : "s") +
        ". Press “Score the batch”.";
    };
    reader.onerror = () => {
      $("batch-summary").textContent = "Could not read " + file.name + ".";
    };
    reader.readAsText(file);
  }

  function onBatchEdited() {
    state.batchFile = null; // the text as edited is what gets scored
  }

  /** One call: the CSV as it is, scored by the service (Accept: text/csv), shown as a table and offered as a file. */
  async function onBatchScore() {
    const entry = state.entry;
    clearBatch();
    const summary = $("batch-summary");
    const body = state.batchFile || $("batch-text").value;
    if (!state.batchFile && !body.trim()) {
      summary.replaceChildren(el("p", { class: "error", text: "Paste a CSV or choose a file first." }));
      return;
    }
    const query = new URLSearchParams({ interval: "true" });
    const field = FAMILIES[entry.family].field;
    if (field) query.set(field, entry.dataset);
    const button = $("batch-score");
    button.disabled = true;
    summary.textContent = "Scoring…";
    try {
      const text = await api(endpointOf(entry) + "?" + query.toString(),
        { method: "POST", body, contentType: "text/csv", accept: "text/csv" });
      if (typeof text !== "string") {
        throw new ApiError(0, "this server does not answer CSV; it needs a newer cellmfg", []);
      }
      const table = parseCsv(text);
      const header = table[0] || [];
      const rows = table.slice(1);
      state.batch = { header, rows, sort: null };
      renderBatchTable();
      const flag = header.indexOf("in_domain");
      const outside = rows.filter((r) => r[flag] === "false").length;
      summary.textContent = rows.length + " row" + (rows.length === 1 ? "" : "s") + " scored; " + outside +
        " outside the training range" + (outside ? " (highlighted)." : ".") + (rows.length > TABLE_ROWS_SHOWN ?
        " The table shows the first " + TABLE_ROWS_SHOWN + " rows in the chosen order; the download has every row." :
        "");
      state.downloadUrl = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
      const link = $("batch-download");
      link.href = state.downloadUrl;
      link.download = state.batchName + "-scored.csv";
      link.hidden = false;
    } catch (error) {
      showError(summary, error, "Scoring the batch");
    } finally {
      button.disabled = false;
    }
  }

  /** The service's columns: predictions, interval bounds and SHAP values, shown rounded (the file keeps them all). */
  function isResultColumn(name) {
    return /_(predicted|low|high)$/.test(name) || name.includes("_shap_");
  }

  function renderBatchTable() {
    const { header, rows, sort } = state.batch;
    const flag = header.indexOf("in_domain");
    const rounded = header.map(isResultColumn);
    const shapColumns = header.map((name, c) => name.includes("_shap_") ? c : -1).filter((c) => c >= 0);
    const order = rows.map((_, i) => i);
    if (sort) {
      const cells = rows.map((r) => r[sort.column] === undefined ? "" : r[sort.column]);
      const numeric = cells.every((v) => v.trim() === "" || Number.isFinite(Number(v)));
      const key = (i) => numeric ? (cells[i].trim() === "" ? -Infinity : Number(cells[i])) : cells[i];
      order.sort((a, b) => {
        const ka = key(a);
        const kb = key(b);
        return ka < kb ? -sort.direction : ka > kb ? sort.direction : a - b;
      });
    }
    const head = el("tr", {}, ...header.map((name, c) => {
      const active = sort && sort.column === c;
      const ariaSort = active ? (sort.direction > 0 ? "ascending" : "descending") : "none";
      const button = el("button", { type: "button", class: "sort", text: name + (active ?
        (sort.direction > 0 ? " ▲" : " ▼") : "") });
      button.addEventListener("click", () => {
        state.batch.sort = { column: c, direction: active && sort.direction > 0 ? -1 : 1 };
        renderBatchTable();
        $("batch-table").tHead.querySelectorAll("button")[c].focus();
      });
      return el("th", { scope: "col", "aria-sort": ariaSort }, button);
    }));
    $("batch-table").tHead.replaceChildren(head);
    const body = order.slice(0, TABLE_ROWS_SHOWN).map((i) => {
      const r = rows[i];
      const outside = r[flag] === "false";
      const shown = r.map((v) => (v.trim() === "" ? NaN : Number(v)));
      const shap = shapZeroed(shapColumns.map((c) => shown[c]));
      shapColumns.forEach((c, k) => { shown[c] = shap[k]; });
      return el("tr", { class: outside ? "ood" : null, "data-row": i },
        ...r.map((v, c) => el("td", { text: c === flag && outside ? "false ⚠" :
          (rounded[c] && v.trim() !== "" ? fmt(shown[c]) : v) })));
    });
    $("batch-table").tBodies[0].replaceChildren(...body);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Views: "Predict a recipe" and "Design a recipe" (ARIA tabs: arrow keys move between them)

  const DESIGN_ENDPOINTS = { electrode: "design/electrode", gdl: "design/gdl" };
  const DEFAULT_TOLERANCE_PCT = 5; // the API's default

  function selectView(name, focusTab = true) {
    for (const tab of document.querySelectorAll("#views [role=tab]")) {
      const chosen = tab.id === "tab-" + name;
      tab.setAttribute("aria-selected", chosen ? "true" : "false");
      tab.tabIndex = chosen ? 0 : -1;
      $(tab.getAttribute("aria-controls")).hidden = !chosen;
      if (chosen && focusTab && document.activeElement && document.activeElement.getAttribute("role") === "tab") {
        tab.focus();
      }
    }
  }

  function onTabKey(event) {
    const tabs = [...document.querySelectorAll("#views [role=tab]")].filter((t) => !t.hidden);
    const i = tabs.indexOf(event.currentTarget);
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    const tab = tabs[(next + tabs.length) % tabs.length];
    tab.focus();
    selectView(tab.id.replace("tab-", ""));
  }

  // ---------------------------------------------------------------------------------------------------------
  // Design: wanted values in, ranked recipes out (POST /design/{electrode|gdl}, one call per click)

  /** The dataset's targets, in the order /models lists its models: {column, task, unit}. */
  function designTargets(entry) {
    const seen = new Map();
    for (const m of entry.models) {
      if (!seen.has(m.target.column)) seen.set(m.target.column, { column: m.target.column, task: m.target.task,
        unit: m.target.unit });
    }
    return [...seen.values()];
  }

  /** An input with its label and an error line for the API's message about it. */
  function designInput(id, labelText, attrs) {
    const input = el("input", Object.assign({ id, type: "number", step: "any", inputmode: "decimal",
      "aria-describedby": "de-" + id }, attrs));
    return el("div", { class: "field" }, el("label", { for: id, text: labelText }), input,
      el("span", { id: "de-" + id, class: "field-error" }));
  }

  function setUpDesign(entry, same) {
    const designable = Boolean(DESIGN_ENDPOINTS[entry.family]);
    $("views").hidden = !designable;
    if (!designable) {
      selectView("predict", false);
      return;
    }
    if (same) return; // the catalogue re-read after a token: keep what was typed
    const targets = designTargets(entry);
    $("design-targets").replaceChildren(...targets.map((t) => el("fieldset", { class: "design-target",
      "data-target": t.column },
    el("legend", {}, el("span", { class: "name", text: t.column }), " ",
      el("span", { class: "unit", text: "[" + t.unit + "]" })),
    el("div", { class: "row" },
      designInput("dt-" + t.column, "Wanted value [" + t.unit + "]", { placeholder: "none" }),
      designInput("dtol-" + t.column, "Tolerance [%]", { min: "0", max: "50", value:
        String(DEFAULT_TOLERANCE_PCT) })))));
    $("design-fixed").replaceChildren(...entry.features.map((f) => {
      const box = el("input", { id: "dfix-" + f.name, type: "checkbox", "aria-controls": "dfv-" + f.name });
      const value = el("input", { id: "dfv-" + f.name, type: "number", step: "any", inputmode: "decimal",
        disabled: true, "aria-label": f.name + " fixed at [" + f.unit + "]",
        "aria-describedby": "dr-" + f.name + " de-dfv-" + f.name });
      value.value = String(Number(startValue(f).toPrecision(6)));
      box.addEventListener("change", () => {
        value.disabled = !box.checked;
        row.classList.toggle("fixed", box.checked);
        if (box.checked) value.focus();
      });
      const row = el("div", { class: "design-param", "data-feature": f.name },
        el("label", { class: "check", for: "dfix-" + f.name }, box, " ",
          el("span", { class: "name", text: f.name }), " ", el("span", { class: "unit", text: "[" + f.unit + "]" })),
        value,
        el("span", { id: "dr-" + f.name, class: "range", text: "trained on " + rangeText(f) }),
        el("span", { id: "de-dfv-" + f.name, class: "field-error" }));
      return row;
    }));
    $("design-body").replaceChildren(el("p", { class: "hint",
      text: "Enter at least one wanted value and press “Find recipes”." }));
    $("design-detail").replaceChildren();
  }

  function clearDesignErrors() {
    for (const node of document.querySelectorAll("#design-form .field-error")) node.textContent = "";
    for (const node of document.querySelectorAll("#design-form [aria-invalid]")) node.removeAttribute("aria-invalid");
  }

  function markDesignField(id, message) {
    const input = $(id);
    if (!input) return false;
    input.setAttribute("aria-invalid", "true");
    const line = $("de-" + id);
    if (line) line.textContent = line.textContent ? line.textContent + " " + message : message;
    return true;
  }

  /** The form's field that an API error location (["targets", column, "value"], ["fixed", name], ["k"]) names. */
  function fieldOfLoc(loc) {
    if (!Array.isArray(loc) || !loc.length) return null;
    if (loc[0] === "targets" && loc.length >= 2) return (loc[2] === "tolerance_pct" ? "dtol-" : "dt-") + loc[1];
    if (loc[0] === "fixed" && loc.length >= 2) return "dfv-" + loc[1];
    if (loc[0] === "k") return "design-k";
    return null;
  }

  /** The request the form says, or null (the fields at fault marked) when it cannot be sent. */
  function readDesign(entry) {
    const targets = {};
    const fixed = {};
    let firstBad = null;
    const bad = (id, message) => {
      markDesignField(id, message);
      if (!firstBad) firstBad = $(id);
    };
    const number = (id) => {
      const text = $(id).value.trim();
      return text === "" ? null : Number(text);
    };
    for (const t of designTargets(entry)) {
      const value = number("dt-" + t.column);
      if (value === null) continue; // not constrained
      if (!Number.isFinite(value)) {
        bad("dt-" + t.column, "Enter a number in " + t.unit + ".");
        continue;
      }
      const tolerance = number("dtol-" + t.column);
      if (tolerance !== null && !Number.isFinite(tolerance)) {
        bad("dtol-" + t.column, "Enter a number in %.");
        continue;
      }
      targets[t.column] = tolerance === null ? { value } : { value, tolerance_pct: tolerance };
    }
    for (const f of entry.features) {
      if (!$("dfix-" + f.name).checked) continue;
      const value = number("dfv-" + f.name);
      if (value === null || !Number.isFinite(value)) bad("dfv-" + f.name, "Enter a number in " + f.unit + ".");
      else fixed[f.name] = value;
    }
    const k = number("design-k");
    if (k !== null && !Number.isInteger(k)) bad("design-k", "Enter a whole number of recipes.");
    if (!firstBad && Object.keys(targets).length === 0) {
      const first = "dt-" + designTargets(entry)[0].column;
      bad(first, "Enter a wanted value for at least one target.");
    }
    if (firstBad) {
      firstBad.focus();
      return null;
    }
    const body = { [FAMILIES[entry.family].field]: entry.dataset, targets, fixed,
      explain: $("design-explain").checked };
    if (k !== null) body.k = k;
    return body;
  }

  async function onDesign(event) {
    event.preventDefault();
    const entry = state.entry;
    const out = $("design-body");
    clearDesignErrors();
    $("design-detail").replaceChildren();
    const request = readDesign(entry);
    if (!request) {
      out.replaceChildren(el("p", { class: "error", role: "alert",
        text: "Fix the marked fields first: at least one wanted value, every entered value a number." }));
      return;
    }
    const ticket = ++state.designSequence;
    const button = $("design-run");
    button.disabled = true;
    out.setAttribute("aria-busy", "true");
    out.replaceChildren(el("p", { class: "hint", text: "Searching…" }));
    try {
      const answer = await api(DESIGN_ENDPOINTS[entry.family], { method: "POST", body: request });
      if (ticket !== state.designSequence) return;
      renderDesign(entry, request, answer);
    } catch (error) {
      if (ticket !== state.designSequence) return;
      if (error.status === 422 && error.payload && error.payload.reachable) {
        renderInfeasible(entry, request, error.payload);
      } else {
        showError(out, error, "The design");
        const detail = error.payload && Array.isArray(error.payload.detail) ? error.payload.detail : [];
        let first = null;
        for (const d of detail) {
          const id = fieldOfLoc(d.loc);
          if (id && markDesignField(id, d.msg || String(d)) && !first) first = id;
        }
        if (first) $(first).focus();
      }
    } finally {
      button.disabled = false;
      out.removeAttribute("aria-busy");
    }
  }

  /** Wanted value and reachable range of each requested target. */
  function reachableTable(entry, request, reachable) {
    const rows = designTargets(entry).filter((t) => reachable[t.column]).map((t) => {
      const goal = request.targets[t.column];
      const range = reachable[t.column];
      const tolerance = goal && goal.tolerance_pct !== undefined ? goal.tolerance_pct : DEFAULT_TOLERANCE_PCT;
      return el("tr", { "data-target": t.column },
        el("th", { scope: "row" }, el("code", { text: t.column })),
        el("td", { text: goal ? fmt(goal.value) + " ± " + fmt(tolerance) + " %" : "not constrained" }),
        el("td", {}, el("span", { class: "reach-min", "data-value": String(range.min), text: fmt(range.min) }),
          " – ", el("span", { class: "reach-max", "data-value": String(range.max), text: fmt(range.max) }),
          range.unit === "1" ? "" : " " + range.unit)); // a dimensionless target (tortuosity) shows no unit
    });
    return el("table", { class: "info reachable" },
      el("caption", { text: "What the free parameters reach under the fixed ones" }),
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "target" }), el("th", { scope: "col",
        text: "wanted" }), el("th", { scope: "col", text: "reachable" }))),
      el("tbody", {}, ...rows));
  }

  function fixedLine(entry, fixed) {
    const names = Object.keys(fixed);
    if (!names.length) return el("p", { class: "hint", text: "Nothing fixed: every parameter was searched." });
    const units = Object.fromEntries(entry.features.map((f) => [f.name, f.unit]));
    const items = names.map((name) => el("li", { "data-feature": name, "data-value": String(fixed[name]) },
      el("code", { text: name }), " = " + String(fixed[name]) + " " + (units[name] || "")));
    return el("div", { class: "design-fixed-list" }, el("p", {}, el("strong", { text: "Fixed as given:" })),
      el("ul", {}, ...items));
  }

  /** A column name that may break after its underscores, so that a table of them fits a tablet. */
  function breakable(name) {
    const code = el("code");
    name.split("_").forEach((part, i, parts) => {
      code.append(part + (i < parts.length - 1 ? "_" : ""));
      if (i < parts.length - 1) code.append(el("wbr"));
    });
    return code;
  }

  /** The recipes, ranked as the API ranks them; a row's button shows its explanation below. */
  function recipeTable(entry, recipes, free, answerModels) {
    const targets = designTargets(entry);
    const units = Object.fromEntries(entry.features.map((f) => [f.name, f.unit]));
    const head = el("tr", {}, el("th", { scope: "col", text: "rank" }),
      ...free.map((name) => el("th", { scope: "col" }, breakable(name), el("br"),
        el("span", { class: "unit", text: "[" + units[name] + "]" }))),
      ...targets.map((t) => el("th", { scope: "col" }, breakable(t.column), el("br"),
        el("span", { class: "unit", text: "predicted, 90 % interval" }))),
      el("th", { scope: "col", text: "in training range" }));
    const table = el("table", { class: "batch recipes" }, el("thead", {}, head));
    const body = el("tbody");
    recipes.forEach((recipe, i) => {
      const label = recipe.rank === undefined ? "closest" : "#" + recipe.rank;
      const pick = el("button", { type: "button", class: "pick secondary", "aria-pressed": "false",
        "aria-label": "Show recipe " + label.replace("#", ""), text: label });
      const p = recipe.prediction;
      const row = el("tr", { "data-index": i, "data-rank": recipe.rank === undefined ? null : recipe.rank,
        class: p.in_domain ? null : "ood" },
      el("td", {}, pick),
      ...free.map((name) => el("td", { "data-feature": name, "data-value": String(recipe.settings[name]),
        text: fmt(recipe.settings[name]) })),
      ...targets.map((t) => {
        const cell = el("td", { "data-target": t.column });
        if (typeof p[t.column] !== "number") return cell;
        cell.append(el("span", { class: "prediction", "data-value": String(p[t.column]), text: fmt(p[t.column]) }));
        const interval = p.interval && p.interval[t.column];
        if (interval) {
          cell.append(el("span", { class: "interval" }, "(",
            el("span", { class: "interval-low", "data-value": String(interval[0]), text: fmt(interval[0]) }), " – ",
            el("span", { class: "interval-high", "data-value": String(interval[1]), text: fmt(interval[1]) }), ")"));
        }
        return cell;
      }),
      el("td", { class: "in-range", "data-in-range": String(p.in_domain),
        text: p.in_domain ? "yes" : "no ⚠ " + p.out_of_domain.map((o) => o.feature).join(", ") }));
      pick.addEventListener("click", () => {
        for (const other of table.querySelectorAll("button.pick")) other.setAttribute("aria-pressed", "false");
        for (const other of table.querySelectorAll("tr.selected")) other.classList.remove("selected");
        pick.setAttribute("aria-pressed", "true");
        row.classList.add("selected");
        showRecipe(entry, recipe, answerModels, label);
      });
      body.append(row);
    });
    table.append(body);
    return el("div", { class: "table-wrap" }, table);
  }

  /** One recipe in full: the page's own answer view (verdict, predictions, intervals, SHAP waterfalls). */
  function showRecipe(entry, recipe, answerModels, label) {
    const use = el("button", { type: "button", id: "design-use", text: "Use this recipe" });
    use.addEventListener("click", () => useRecipe(entry, recipe.settings, label));
    const answer = { models: answerModels || {}, predictions: [recipe.prediction] };
    $("design-detail").replaceChildren(el("div", { class: "row design-detail-head" },
      el("h3", { text: "Recipe " + label }), use),
    ...renderAnswer(entry, recipe.settings, answer, null));
  }

  /** Copies a recipe's settings into the prediction form and shows it (no API call: Predict is one click away). */
  function useRecipe(entry, settings, label) {
    if (state.entry !== entry) return;
    for (const f of entry.features) {
      const input = $("f-" + f.name);
      if (settings[f.name] === undefined) continue;
      input.value = String(settings[f.name]);
      checkField(f, input);
    }
    state.baseline = null;
    $("whatif").hidden = true;
    $("result-body").replaceChildren(el("p", { class: "hint",
      text: "Recipe " + label + " of the design is in the form: press Predict." }));
    selectView("predict", false);
    $("f-" + entry.features[0].name).focus();
  }

  function renderDesign(entry, request, answer) {
    const free = Object.keys(answer.search.free);
    const n = answer.recipes.length;
    const nodes = [el("p", { class: "verdict ok" }, el("strong", { text: n + " recipe" + (n === 1 ? "" : "s") }),
      " meet" + (n === 1 ? "s" : "") + " every target within its tolerance, closest first (ties go to the " +
      "narrower interval). Select one to see its explanation.")];
    const search = answer.search;
    if (!search.within_training_range) {
      const named = [...search.fixed_outside_training_range, ...search.no_common_training_range];
      nodes.push(el("p", { class: "verdict warn", role: "alert", text: "Outside the training range: " +
        named.join(", ") + ". These recipes are extrapolations." }));
    }
    nodes.push(fixedLine(entry, search.fixed), reachableTable(entry, request, answer.reachable),
      recipeTable(entry, answer.recipes, free, answer.models));
    $("design-body").replaceChildren(...nodes);
  }

  function renderInfeasible(entry, request, payload) {
    const free = entry.features.map((f) => f.name).filter((name) => request.fixed[name] === undefined);
    const nodes = [el("div", { class: "error design-infeasible", role: "alert" },
      el("p", { text: payload.error }))];
    nodes.push(fixedLine(entry, request.fixed), reachableTable(entry, request, payload.reachable));
    if (payload.closest) {
      nodes.push(el("h3", { text: "The closest recipe found" }),
        recipeTable(entry, [payload.closest], free, null));
    }
    $("design-body").replaceChildren(...nodes);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Plan experiments: which recipes to measure next (POST /suggest/{electrode|gdl}, one call per click)

  const SUGGEST_ENDPOINTS = { electrode: "suggest/electrode", gdl: "suggest/gdl" };

  function setUpPlan(entry, same) {
    $("tab-plan").hidden = !SUGGEST_ENDPOINTS[entry.family];
    if (same || !SUGGEST_ENDPOINTS[entry.family]) return;
    $("plan-windows").replaceChildren(...designTargets(entry).map((t) => el("fieldset", { class: "design-target",
      "data-target": t.column },
    el("legend", {}, el("span", { class: "name", text: t.column }), " ",
      el("span", { class: "unit", text: "[" + t.unit + "] wanted window (optional)" })),
    el("div", { class: "row" },
      designInput("pwl-" + t.column, "Low [" + t.unit + "]", { placeholder: "none" }),
      designInput("pwh-" + t.column, "High [" + t.unit + "]", { placeholder: "none" })))));
    $("plan-fixed").replaceChildren(...entry.features.map((f) => {
      const box = el("input", { id: "pfix-" + f.name, type: "checkbox", "aria-controls": "pfv-" + f.name });
      const value = el("input", { id: "pfv-" + f.name, type: "number", step: "any", inputmode: "decimal",
        disabled: true, "aria-label": f.name + " fixed at [" + f.unit + "]", "aria-describedby": "de-pfv-" + f.name });
      value.value = String(Number(startValue(f).toPrecision(6)));
      box.addEventListener("change", () => {
        value.disabled = !box.checked;
        if (box.checked) value.focus();
      });
      return el("div", { class: "design-param", "data-feature": f.name },
        el("label", { class: "check", for: "pfix-" + f.name }, box, " ", el("span", { class: "name", text: f.name }),
          " ", el("span", { class: "unit", text: "[" + f.unit + "]" })),
        value, el("span", { class: "range", text: "trained on " + rangeText(f) }),
        el("span", { id: "de-pfv-" + f.name, class: "field-error" }));
    }));
    $("plan-body").replaceChildren(el("p", { class: "hint", text: "Press “Suggest experiments”." }));
  }

  /** The request the plan form says, or null (the fields at fault marked). */
  function readPlan(entry) {
    const window = {};
    const fixed = {};
    let firstBad = null;
    const bad = (id, message) => {
      markDesignField(id, message);
      if (!firstBad) firstBad = $(id);
    };
    const number = (id) => {
      const text = $(id).value.trim();
      return text === "" ? null : Number(text);
    };
    for (const t of designTargets(entry)) {
      const low = number("pwl-" + t.column);
      const high = number("pwh-" + t.column);
      if (low === null && high === null) continue;
      if (low === null || !Number.isFinite(low)) bad("pwl-" + t.column, "Enter a number in " + t.unit + ".");
      else if (high === null || !Number.isFinite(high)) bad("pwh-" + t.column, "Enter a number in " + t.unit + ".");
      else window[t.column] = { low, high };
    }
    for (const f of entry.features) {
      if (!$("pfix-" + f.name).checked) continue;
      const value = number("pfv-" + f.name);
      if (value === null || !Number.isFinite(value)) bad("pfv-" + f.name, "Enter a number in " + f.unit + ".");
      else fixed[f.name] = value;
    }
    const k = number("plan-k");
    if (k !== null && !Number.isInteger(k)) bad("plan-k", "Enter a whole number of experiments.");
    if (firstBad) {
      firstBad.focus();
      return null;
    }
    const body = { [FAMILIES[entry.family].field]: entry.dataset, window, fixed };
    if (k !== null) body.k = k;
    return body;
  }

  /** The form's field an API error location (["window", column, "low"], ["fixed", name], ["k"]) names. */
  function planFieldOfLoc(loc) {
    if (!Array.isArray(loc) || !loc.length) return null;
    if (loc[0] === "window" && loc.length >= 2) return (loc[2] === "high" ? "pwh-" : "pwl-") + loc[1];
    if (loc[0] === "fixed" && loc.length >= 2) return "pfv-" + loc[1];
    if (loc[0] === "k") return "plan-k";
    return null;
  }

  async function onPlan(event) {
    event.preventDefault();
    const entry = state.entry;
    const out = $("plan-body");
    for (const node of document.querySelectorAll("#plan-form .field-error")) node.textContent = "";
    for (const node of document.querySelectorAll("#plan-form [aria-invalid]")) node.removeAttribute("aria-invalid");
    const request = readPlan(entry);
    if (!request) {
      out.replaceChildren(el("p", { class: "error", role: "alert", text: "Fix the marked fields first." }));
      return;
    }
    const ticket = ++state.designSequence;
    const button = $("plan-run");
    button.disabled = true;
    out.setAttribute("aria-busy", "true");
    out.replaceChildren(el("p", { class: "hint", text: "Searching…" }));
    try {
      const answer = await api(SUGGEST_ENDPOINTS[entry.family], { method: "POST", body: request });
      if (ticket !== state.designSequence) return;
      renderPlan(entry, answer);
    } catch (error) {
      if (ticket !== state.designSequence) return;
      showError(out, error, "The suggestion");
      const detail = error.payload && Array.isArray(error.payload.detail) ? error.payload.detail : [];
      for (const d of detail) {
        const id = planFieldOfLoc(d.loc);
        if (id) markDesignField(id, d.msg || String(d));
      }
    } finally {
      button.disabled = false;
      out.removeAttribute("aria-busy");
    }
  }

  function renderPlan(entry, answer) {
    const suggestions = answer.suggestions;
    const free = Object.keys(answer.search.free);
    const targets = designTargets(entry);
    const head = el("tr", {}, el("th", { scope: "col", text: "#" }),
      ...free.map((c) => el("th", { scope: "col" }, el("code", { text: c }))),
      ...targets.map((t) => el("th", { scope: "col", text: t.column + " [" + t.unit + "]" })),
      el("th", { scope: "col", text: "prediction id" }));
    const rows = suggestions.map((s) => el("tr", { "data-rank": String(s.rank) },
      el("th", { scope: "row", text: String(s.rank) }),
      ...free.map((c) => el("td", { text: fmt(s.settings[c]) })),
      ...targets.map((t) => el("td", { text: fmt(s.prediction[t.column]) +
        (s.spread ? " ± " + fmt(s.spread[t.column]) : "") })),
      el("td", {}, el("code", { text: s.prediction_id || "—" }))));
    $("plan-body").replaceChildren(
      el("p", { class: "verdict ok" }, el("strong", { text: suggestions.length + " experiment" +
        (suggestions.length === 1 ? "" : "s") }), ": " + answer.strategy_reason + "."),
      el("div", { class: "table-wrap" }, el("table", { class: "batch plan-table" }, el("thead", {}, head),
        el("tbody", {}, ...rows))),
      el("ol", { class: "plan-why" }, ...suggestions.map((s) => el("li", { text: s.why }))));
  }

  // ---------------------------------------------------------------------------------------------------------

  function start() {
    $("token-form").addEventListener("submit", onToken);
    $("family").addEventListener("change", renderDatasets);
    $("dataset").addEventListener("change", chooseDataset);
    $("recipe-form").addEventListener("submit", onPredict);
    $("reset").addEventListener("click", onReset);
    $("whatif-feature").addEventListener("change", () => {
      syncWhatIf();
      $("whatif-body").replaceChildren();
    });
    $("whatif-slider").addEventListener("input", onWhatIfSlider);
    $("whatif-slider").addEventListener("change", () => runWhatIf(Number($("whatif-slider").value)));
    $("whatif-value").addEventListener("change", () => {
      const text = $("whatif-value").value.trim();
      const value = text === "" ? NaN : Number(text);
      if (Number.isFinite(value)) $("whatif-slider").value = String(value);
      runWhatIf(value);
    });
    $("whatif-keep").addEventListener("click", onWhatIfKeep);
    $("batch-file").addEventListener("change", onBatchFile);
    $("batch-text").addEventListener("input", onBatchEdited);
    $("batch-score").addEventListener("click", onBatchScore);
    for (const tab of document.querySelectorAll("#views [role=tab]")) {
      tab.addEventListener("click", () => selectView(tab.id.replace("tab-", "")));
      tab.addEventListener("keydown", onTabKey);
    }
    $("design-form").addEventListener("submit", onDesign);
    $("plan-form").addEventListener("submit", onPlan);
    window.addEventListener("focus", refreshModels);
    setInterval(refreshModels, CATALOGUE_REFRESH_MS);
    loadModels();
  }

  start();
})();
