"""MONAI Label's authentication (MONAI_LABEL_AUTH_*) with our app: a real server with auth on, against a small real
OpenID Connect issuer on loopback (tests/oidc_issuer.py, Keycloak's realm layout, RS256 tokens)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import requests
from conftest import APP, write_nifti
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException
from oidc_issuer import Issuer, new_key
from serverctl import start_server, stop_server

from lib.data.synthetic import generate_case

USER, ANNOTATOR, ADMIN = "monailabel-user", "monailabel-annotator", "monailabel-admin"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    studies = root / "studies"
    studies.mkdir()
    case = generate_case(np.random.default_rng(21), "blob", size=(48, 48), depth=(14, 14))
    write_nifti(str(studies / "small.nii.gz"), case.image.astype(np.float32), case.spacing)
    app = root / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("logs", "__pycache__", "*.prev.pt", "limnet.pt"))
    with Issuer() as issuer:
        issuer.add_user("viewer", "view-pass", [USER])
        issuer.add_user("annie", "annie-pass", [USER, ANNOTATOR])
        issuer.add_user("root", "root-pass", [USER, ANNOTATOR, ADMIN])
        log = open(root / "server.log", "w+")
        proc, url = start_server(str(app), str(studies), log=log, HOME=str(root), MONAI_LABEL_AUTH_ENABLE="true",
                                 MONAI_LABEL_AUTH_REALM_URI=issuer.realm_uri, MONAI_LABEL_AUTH_TIMEOUT="5",
                                 MONAI_LABEL_AUTO_UPDATE_SCORING="false")
        try:
            yield {"url": url, "issuer": issuer, "case": case}
        finally:
            stop_server(proc)


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _click(url: str, case, headers: dict | None = None) -> requests.Response:
    k = int(np.argmax(case.label.sum((0, 1))))
    xs, ys = np.nonzero(case.label[:, :, k])
    params = {"foreground": [[int(xs[len(xs) // 2]), int(ys[len(ys) // 2]), k]], "background": [], "client_id": "auth"}
    return requests.post(url + "/infer/limnet?image=small&output=json", data={"params": json.dumps(params)},
                         headers=headers or {}, timeout=300)


def test_identity_provider_down_is_503_not_500(auth_server):
    """Runs first in this module: the server fetches the realm's key on the first request with a token."""
    url, issuer = auth_server["url"], auth_server["issuer"]
    if ("GET", issuer.path) in issuer.requests:
        pytest.skip("the server already holds the realm's key (this test must run first in the module)")
    issuer.available = False
    try:
        r = requests.get(url + "/info/", headers=_bearer(issuer.token("viewer", [USER])))
        assert r.status_code == 503, (r.status_code, r.text[:200])
    finally:
        issuer.available = True
    assert requests.get(url + "/info/", headers=_bearer(issuer.token("viewer", [USER]))).ok


def test_requests_without_a_valid_token_get_401(auth_server):
    url, issuer, case = auth_server["url"], auth_server["issuer"], auth_server["case"]
    assert requests.get(url + "/auth/").json()["enabled"] is True
    for r in (requests.get(url + "/info/"), _click(url, case), requests.get(url + "/datastore/?output=all"),
              requests.put(url + "/datastore/label?image=small&tag=final", files={"label": ("l.nii.gz", b"x")})):
        assert r.status_code == 401, (r.status_code, r.text[:200])
        assert r.headers.get("www-authenticate") == "Bearer"
    bad = {
        "garbage": "not.a.token",
        "foreign key": issuer.token("viewer", [USER], key=new_key()),
        "expired": issuer.token("viewer", [USER], expires_in=-60),
        "no expiry": issuer.token("viewer", [USER], drop=("exp",)),
        "unsigned": issuer.token("viewer", [USER], key=None, algorithm="none"),
    }
    for what, token in bad.items():
        r = requests.get(url + "/info/", headers=_bearer(token))
        assert r.status_code == 401, (what, r.status_code, r.text[:200])


def test_valid_token_is_served_and_roles_are_enforced(auth_server):
    url, issuer, case = auth_server["url"], auth_server["issuer"], auth_server["case"]
    viewer = _bearer(issuer.token("viewer", [USER]))
    assert requests.get(url + "/info/", headers=viewer).json()["models"]["limnet"]["type"] == "deepgrow"
    r = _click(url, case, viewer)
    assert r.status_code == 200 and r.json()["voxels"] > 0, r.text[:300]
    # saving a label needs the annotator role, removing an image the admin role
    r = requests.put(url + "/datastore/label?image=small&tag=final", files={"label": ("l.nii.gz", b"x")}, headers=viewer)
    assert r.status_code == 403, r.text[:200]
    annotator = _bearer(issuer.token("annie", [USER, ANNOTATOR]))
    assert requests.delete(url + "/datastore/image", params={"id": "small"}, headers=annotator).status_code == 403
    admin = _bearer(issuer.token("root", [USER, ANNOTATOR, ADMIN]))
    r = requests.delete(url + "/datastore/image", params={"id": "no_such_image"}, headers=admin)
    assert r.status_code == 404, r.text[:200]  # past the role check
    # what the server fetched from the issuer: the realm document, for its public key
    assert ("GET", issuer.path) in issuer.requests


def test_password_login_through_the_server(auth_server, tmp_path):
    """3D Slicer's flow: POST /auth/token with a user name and password; the server asks the realm's token
    endpoint (from its .well-known document) and hands the token back."""
    url, issuer, case = auth_server["url"], auth_server["issuer"], auth_server["case"]
    client = MONAILabelClient(url, tmpdir=str(tmp_path))
    assert client.auth_enabled()
    with pytest.raises(MONAILabelClientException):
        client.auth_token("annie", "wrong password")
    r = requests.post(url + "/auth/token", data={"username": "annie", "password": "wrong password"})
    assert r.status_code == 401, (r.status_code, r.text[:200])
    token = client.auth_token("annie", "annie-pass")
    client.update_auth(token)
    assert client.auth_valid_token()
    assert requests.get(url + "/auth/token/valid", headers=_bearer(token["access_token"])).json()["username"] == "annie"
    assert "limnet" in client.info()["models"]
    assert ("GET", issuer.path + "/.well-known/openid-configuration") in issuer.requests
    assert ("POST", issuer.path + "/protocol/openid-connect/token") in issuer.requests
    r = _click(url, case, _bearer(token["access_token"]))
    assert r.status_code == 200, r.text[:300]
