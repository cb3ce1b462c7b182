"""The service's own Prometheus metrics, served at /metrics beside BentoML's.

They use `prometheus_client` directly (BentoML 1.4 deprecates `bentoml.metrics`). With more than one worker
BentoML starts each worker with PROMETHEUS_MULTIPROC_DIR already in its environment, so `prometheus_client` is
first imported in multiprocess mode and every sample below lands in the shared directory that BentoML's /metrics
aggregates. The integration tests check this with two workers. That directory is one per `cellmfg serve`
(service.cli.bentoml_serve), so two servers on one host keep their own numbers.

`RouteLabels` bounds the `endpoint` label of BentoML's own request metrics to the service's routes
(service.web.patches.patch_bentoml_metric_labels).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

PREDICTIONS = Counter(
    "cellmfg_predictions", "Prediction requests answered, per model and version", ["model", "version"])
PREDICTED_ROWS = Counter(
    "cellmfg_predicted_rows", "Rows predicted, per model and version", ["model", "version"])
OUT_OF_DOMAIN_ROWS = Counter(
    "cellmfg_out_of_domain_rows",
    "Rows with this feature outside the model's training range (such predictions can be off by 50-80 %)",
    ["model", "feature"])
EXPLANATION_SECONDS = Histogram(
    "cellmfg_explanation_seconds", "Time to compute exact SHAP values for one request, per model", ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
EXPLAINED_ROWS = Counter("cellmfg_explained_rows", "Rows explained with SHAP, per model", ["model"])
MODEL_RELOADS = Counter(
    "cellmfg_model_reloads", "Models swapped in while serving because their alias or bundle moved", ["model"])
MODEL_RELOAD_FAILURES = Counter(
    "cellmfg_model_reload_failures", "Model versions that failed to load or verify and were not swapped in",
    ["model"])
MODEL_POLL_FAILURES = Counter(
    "cellmfg_model_poll_failures",
    "Checks of a model's alias or bundle entry that could not reach the source (the served version is kept)",
    ["model"])
# 1 for the version a worker serves, 0 once replaced; "livemax" keeps the value of any live worker still serving it.
MODEL_INFO = Gauge(
    "cellmfg_model_info", "Served model version and alias (1 = serving)", ["model", "version", "alias"],
    multiprocess_mode="livemax")
# -- recipe design (service.design.search)
DESIGNS = Counter("cellmfg_designs", "Recipe designs answered with at least one search, per dataset", ["dataset"])
DESIGNS_INFEASIBLE = Counter(
    "cellmfg_designs_infeasible", "Design requests no recipe could meet (answered 422 with the reachable range)",
    ["dataset"])
DESIGN_SECONDS = Histogram(
    "cellmfg_design_seconds", "Time to search and answer one design request, per dataset", ["dataset"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
# -- end recipe design
# -- experiment suggestions (service.design.suggest): dataset names are the served ones (the request schema checks them)
SUGGESTIONS = Counter("cellmfg_suggestions", "Experiment suggestions answered, per dataset and strategy",
                      ["dataset", "strategy"])
SUGGESTIONS_INFEASIBLE = Counter(
    "cellmfg_suggestions_infeasible", "Suggestion requests whose wanted window no recipe can reach (answered 422)",
    ["dataset"])
SUGGEST_SECONDS = Histogram(
    "cellmfg_suggest_seconds", "Time to search and answer one suggestion request, per dataset", ["dataset"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0))


# -- prediction ledger (service.ledger.recording): labels are served model names and their contract's features only.
# Every worker computes the same figures from the shared ledger, so the highest live value is the value.
LEDGER_FAILURES = Counter("cellmfg_ledger_failures", "Answers refused (503) because the ledger could not record them")
LEDGER_ROWS = Gauge("cellmfg_ledger_rows", "Rows in the prediction ledger, per table", ["table"],
                    multiprocess_mode="livemax")
LEDGER_SIZE_BYTES = Gauge("cellmfg_ledger_size_bytes", "Size of the prediction ledger's database",
                          multiprocess_mode="livemax")
LEDGER_SPOOLED_ROWS = Gauge("cellmfg_ledger_spooled_rows", "Answered rows committed to the local outage spool and not "
                            "yet forwarded to the ledger's database (PostgreSQL unreachable)",
                            multiprocess_mode="livemax")
LIVE_OUTCOMES = Gauge("cellmfg_live_outcomes", "Measured predictions of the served version of a model", ["model"],
                      multiprocess_mode="livemax")
LIVE_MAPE = Gauge("cellmfg_live_mape_pct", "MAPE (%) of the last 50 measured predictions of the served version",
                  ["model"], multiprocess_mode="livemax")
TEST_MAPE_UPPER = Gauge("cellmfg_model_test_mape_upper_pct", "Upper end of the contract's test MAPE (%): mean + 2 sd "
                        "over repeated splits, else the single split's", ["model"], multiprocess_mode="livemax")
LIVE_COVERAGE = Gauge("cellmfg_live_interval_coverage", "Share of measured values inside their 90 % interval",
                      ["model"], multiprocess_mode="livemax")
LIVE_IN_DOMAIN = Gauge("cellmfg_live_share_in_domain", "Share of measured predictions inside the training range",
                       ["model"], multiprocess_mode="livemax")
DRIFT_OUTSIDE = Gauge("cellmfg_drift_share_outside", "Share of a model's last 500 inputs outside the feature's "
                      "training range", ["model", "feature"], multiprocess_mode="livemax")
DRIFT_PSI = Gauge("cellmfg_drift_psi", "Population stability index of a model's last 500 inputs against the "
                  "training quantiles (only when the contract carries them)", ["model", "feature"],
                  multiprocess_mode="livemax")
# -- end prediction ledger


# Models of the catalogue (every model the source offers) served and not served, per worker; a lab's own models count
# too, so an alert on state="missing" > 0 catches a refused newcomer whatever the catalogue's size.
CATALOGUE_MODELS = Gauge(
    "cellmfg_catalogue_models", "Models in the source's catalogue, by state (served, missing)", ["state"],
    multiprocess_mode="livemax")


def sample(metric: Counter | Gauge, **labels: str) -> float:
    """Sum of a counter's or gauge's samples in this process whose labels include `labels` (tests, diagnostics)."""
    total = 0.0
    for family in metric.collect():
        for s in family.samples:
            if not s.name.endswith("_created") and all(s.labels.get(k) == v for k, v in labels.items()):
                total += float(s.value)
    return total


def declare(model: str, version: str | None = None, features: list[str] | tuple[str, ...] = ()) -> None:
    """Create a model's series at zero, so dashboards and rate() see them before the first event (and, in
    multiprocess mode, so /metrics lists them at all)."""
    MODEL_RELOADS.labels(model=model)
    MODEL_RELOAD_FAILURES.labels(model=model)
    MODEL_POLL_FAILURES.labels(model=model)
    EXPLAINED_ROWS.labels(model=model)
    EXPLANATION_SECONDS.labels(model=model)
    if version is not None:
        PREDICTIONS.labels(model=model, version=version)
        PREDICTED_ROWS.labels(model=model, version=version)
    for feature in features:
        OUT_OF_DOMAIN_ROWS.labels(model=model, feature=feature)


# -- the `endpoint` label of BentoML's request metrics (service.web.patches.patch_bentoml_metric_labels)

OTHER_ENDPOINT = "other"  # every path that is not one of the service's routes: 404s, probes of random paths


class RouteLabels:
    """The `endpoint` label of a request path: the route template it matches (`/predict/{model_name}`), else
    `OTHER_ENDPOINT`. BentoML labels its request metrics with the raw path, so any client could add series to the
    open /metrics without bound and publish whatever it put in a path (a token, say); with this mapping the label
    set is fixed by the service's routes. Templates use Starlette's `{name}` syntax; exact routes win over templates
    (`/predict/electrode` is its own label, not `/predict/{model_name}`)."""

    def __init__(self, templates: Iterable[str]) -> None:
        from starlette.routing import compile_path

        self.exact = frozenset(t for t in templates if "{" not in t)
        self.patterns = tuple((compile_path(t)[0], t) for t in sorted({t for t in templates if "{" in t}))

    def __call__(self, path: str) -> str:
        if path in self.exact:
            return path
        for pattern, template in self.patterns:
            if pattern.match(path):
                return template
        return OTHER_ENDPOINT

    @property
    def labels(self) -> frozenset[str]:
        """Every label this mapping can give."""
        return self.exact | {t for _, t in self.patterns} | {OTHER_ENDPOINT}
