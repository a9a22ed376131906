"""`/openapi.json` is a valid OpenAPI 3.1 document listing every route, and the docs page loads
with every asset it references served by the service itself."""

import re
from urllib.parse import urljoin

import requests
from openapi_spec_validator import validate

# Every route the router serves (utoipa-axum builds router and document from the same handlers;
# this list catches a route added outside them).
ROUTES = {
    ("get", "/v2"),
    ("get", "/v2/health/live"),
    ("get", "/v2/health/ready"),
    ("get", "/v2/models/{model}"),
    ("get", "/v2/models/{model}/ready"),
    ("get", "/v2/models/{model}/config"),
    ("post", "/v2/models/{model}/infer"),
    ("get", "/v2/models/{model}/versions/{version}"),
    ("get", "/v2/models/{model}/versions/{version}/ready"),
    ("get", "/v2/models/{model}/versions/{version}/config"),
    ("post", "/v2/models/{model}/versions/{version}/infer"),
    ("get", "/v2/models/stats"),
    ("get", "/v2/models/{model}/stats"),
    ("post", "/v2/repository/index"),
    ("post", "/v2/repository/models/{model}/load"),
    ("post", "/v2/repository/models/{model}/unload"),
    ("get", "/v2/models/{model}/versions/{version}/stats"),
    ("get", "/v2/models/{model}/drift"),
    ("get", "/v2/models/{model}/versions/{version}/drift"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/docs"),
    ("get", "/docs/"),
    ("get", "/docs/{asset}"),
}

GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def test_openapi_document_is_valid_and_complete(serve):
    server = serve("mlp")
    spec = requests.get(f"{server.url}/openapi.json", timeout=5).json()
    assert spec["openapi"].startswith("3.1")
    validate(spec)
    listed = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert listed == ROUTES
    for method, path in sorted(listed):
        url = server.url + path.replace("{model}", "mlp").replace("{version}", "1").replace("{asset}", "swagger-ui.css")
        r = requests.request(method, url, json=GOOD if method == "post" else None, timeout=5, allow_redirects=False)
        if path.endswith("/drift"):
            # The documented 404 of a model served without a reference profile (test_drift.py
            # covers the 200).
            assert r.status_code == 404 and "no reference profile" in r.text, f"{path}: {r.text[:200]}"
            continue
        if path.startswith("/v2/repository/"):
            # The index takes its own body; load and unload answer the documented 400 on a
            # server of fixed model files (test_repository.py covers the repository).
            r = requests.post(url, timeout=5)
            want = 200 if path.endswith("/index") else 400
            assert r.status_code == want, f"{path}: {r.status_code} {r.text[:200]}"
            continue
        assert r.status_code in (200, 303), f"{method} {path}: {r.status_code} {r.text[:200]}"
    # The request and response schemas the infer route points at are present.
    schemas = spec["components"]["schemas"]
    for name in ("InferRequest", "InferResponse", "ErrorBody", "ModelMetadata", "ModelConfig"):
        assert name in schemas, name


def test_docs_page_is_self_contained(serve):
    server = serve("mlp")
    page = requests.get(f"{server.url}/docs", timeout=5)
    assert page.status_code == 200 and "swagger-ui" in page.text
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(refs) >= 5, refs
    for ref in refs:
        assert not ref.startswith(("http://", "https://", "//")), f"external asset {ref}"
        asset = requests.get(urljoin(page.url, ref), timeout=5)
        assert asset.status_code == 200, f"{ref}: {asset.status_code}"
        assert len(asset.content) > 0, ref
    init = requests.get(urljoin(page.url, "swagger-initializer.js"), timeout=5).text
    assert '"url": "/openapi.json"' in init
    assert not re.search(r'"(?:url|validatorUrl)":\s*"https?://', init)


def test_sigterm_exits_cleanly():
    """SIGTERM: the server stops accepting, drains, and exits 0."""
    from conftest import MODELS, Server
    import os

    server = Server(os.path.join(MODELS, "mlp.onnx"))
    assert requests.post(f"{server.url}/v2/models/mlp/infer", json=GOOD, timeout=5).status_code == 200
    server.proc.terminate()
    assert server.proc.wait(timeout=10) == 0
    server.proc.stdout.close()
