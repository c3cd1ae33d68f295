"""A click's answer gzip-encoded on the wire for a client on another machine, through the real server on loopback
(`--conf answer_gzip always` stands for the other machine): HTTP Content-Encoding for clients that accept it (the
same bytes once inflated, a fraction of them on the wire), a gzip NRRD for MONAI Label's own client (Slicer's wire
code), which takes no HTTP gzip; raw answers for clients on the server's machine by default."""

from __future__ import annotations

import json
import zlib

import nrrd
import numpy as np
import pytest
import requests
from conftest import copy_app, start_server, stop_server
from monailabel.client import MONAILabelClient


@pytest.fixture(scope="module")
def always(studies, tmp_path_factory):
    """A second server, started with `--conf answer_gzip always` (as behind a reverse proxy on the same machine)."""
    app = copy_app(tmp_path_factory.mktemp("app_gzip"))
    log = open(tmp_path_factory.mktemp("log_gzip") / "server.log", "w+")
    try:
        proc, url = start_server(app, studies["folder"], log=log, conf={"answer_gzip": "always"},
                                 HOME=str(tmp_path_factory.mktemp("home_gzip")))
    except RuntimeError:
        log.seek(0)
        raise RuntimeError("server did not start:\n" + log.read()[-3000:]) from None
    yield url
    stop_server(proc)


def _click(studies) -> list:
    case = studies["blob"]
    k = int(np.argmax(case.label.sum((0, 1))))
    xs, ys = np.nonzero(case.label[:, :, k])
    return [int(xs[len(xs) // 2]), int(ys[len(ys) // 2]), k]


def _post(url: str, click: list, encoding: str, output: str = "image", **extra) -> requests.Response:
    params = {"foreground": [click], "background": [], "client_id": f"enc-{encoding}-{output}",
              "result_extension": ".nrrd", "result_compress": False, **extra}
    query = f"image=blob&output={output}" if output else "image=blob"
    return requests.post(f"{url}/infer/limnet?{query}", data={"params": json.dumps(params)},
                         headers={"Accept-Encoding": encoding}, stream=True)


def test_an_answer_is_gzipped_for_a_client_that_accepts_it(always, studies):
    click = _click(studies)
    plain = _post(always, click, "identity")
    raw = plain.raw.read(decode_content=False)
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert int(plain.headers["content-length"]) == len(raw)

    packed = _post(always, click, "gzip, deflate, br")  # what a browser sends
    wire = packed.raw.read(decode_content=False)
    assert packed.status_code == 200 and packed.headers["content-encoding"] == "gzip"
    assert "content-length" not in packed.headers  # streamed as it is deflated
    assert "accept-encoding" in packed.headers["vary"].lower()
    assert zlib.decompress(wire, 16 + zlib.MAX_WBITS) == raw, "the same answer once inflated"
    assert len(wire) < len(raw) / 20, (len(wire), len(raw))
    header, body = raw.split(b"\n\n", 1)
    assert b"encoding: raw" in header and np.frombuffer(body, np.uint8).any(), "a raw NRRD with the mask in it"

    # a q-value of 0 refuses gzip
    refused = _post(always, click, "gzip;q=0, identity")
    assert "content-encoding" not in refused.headers and refused.raw.read() == raw


def test_multipart_and_compressed_answers(always, studies):
    click = _click(studies)
    # MONAI Label's default answer (multipart: params and the label file), decoded by requests as a browser would
    multipart = _post(always, click, "gzip", output="")
    assert multipart.headers["content-encoding"] == "gzip"
    body = multipart.content  # requests inflates it
    assert b'name="params"' in body and b"NRRD0004" in body
    # a .nii.gz answer is compressed already: sent as it is
    nifti = _post(always, click, "gzip", result_extension=".nii.gz")
    assert nifti.status_code == 200 and "content-encoding" not in nifti.headers
    assert nifti.raw.read(decode_content=False)[:2] == b"\x1f\x8b"
    # errors pass untouched, with their message
    bad = requests.post(f"{always}/infer/limnet?image=no_such_image&output=image",
                        data={"params": json.dumps({"foreground": [click], "background": []})},
                        headers={"Accept-Encoding": "gzip"})
    assert bad.status_code == 404 and "content-encoding" not in bad.headers and "not found" in bad.text


def test_slicer_gets_a_gzip_nrrd_and_ohif_on_loopback_the_raw_answer(server, always, studies):
    """MONAI Label's client (http.client, as Slicer's plugin) takes no HTTP gzip: its answer (multipart) comes as a
    gzip-encoded NRRD with the same mask, from another machine (here `always`) and on loopback, unless the request
    says `result_compress`; the default server (`answer_gzip` auto) answers OHIF's request (raw NRRD asked, one
    file) from its own machine raw, even when gzip is accepted."""
    click = _click(studies)
    masks = {}
    for name, url, extra in (("local", server["url"], {}), ("travels", always, {}),
                             ("travels, raw asked", always, {"result_compress": False}),
                             ("local, raw asked", server["url"], {"result_compress": "false"})):
        path, meta = MONAILabelClient(url).infer("limnet", "blob", {
            "foreground": [click], "background": [], "client_id": "enc-slicer", "result_extension": ".nrrd",
            "label": "target", **extra})
        masks[name], header = nrrd.read(path)
        assert header["encoding"] == ("raw" if "raw asked" in name else "gzip"), name
        assert masks[name][tuple(click)] > 0
    assert all(np.array_equal(masks["local"], m) for m in masks.values())
    local = _post(server["url"], click, "gzip, deflate")
    assert "content-encoding" not in local.headers and "content-length" in local.headers
    body = local.raw.read()
    assert b"encoding: raw" in body[:400], "OHIF-style requests say result_compress false and get a raw NRRD"


def test_a_reverse_proxy_on_the_same_machine_passes_the_clients_address(server, studies):
    """Behind a reverse proxy on the server's machine that says whom it forwards for (X-Forwarded-For, as nginx is
    usually set up), the default server sees the remote client (uvicorn trusts the header from 127.0.0.1) and
    compresses its answer."""
    click = _click(studies)
    params = {"foreground": [click], "background": [], "client_id": "enc-proxy", "result_extension": ".nrrd",
              "result_compress": False}
    forwarded = requests.post(f"{server['url']}/infer/limnet?image=blob&output=image",
                              data={"params": json.dumps(params)}, stream=True,
                              headers={"Accept-Encoding": "gzip", "X-Forwarded-For": "192.0.2.7"})
    assert forwarded.status_code == 200 and forwarded.headers.get("content-encoding") == "gzip"
    assert zlib.decompress(forwarded.raw.read(decode_content=False), 16 + zlib.MAX_WBITS).startswith(b"NRRD0004")


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True),
                                         ("::ffff:127.0.0.1", True), ("192.168.1.20", False),
                                         ("::ffff:10.0.0.2", False), ("2001:db8::1", False), ("", False)])
def test_which_clients_count_as_the_servers_own_machine(host, local):
    from lib.server_patches import _is_loopback

    assert _is_loopback(host) is local


def test_the_viewers_code_is_gzipped_for_a_remote_browser_and_pictures_are_not(always, server):
    """OHIF's page and scripts travel deflated to a browser on another machine (here `always`); its pictures, already
    compressed, as they are; a browser on the server's machine gets everything as it is (default server)."""
    import glob
    import os

    import monailabel

    bundle = os.path.join(os.path.dirname(monailabel.__file__), "endpoints", "static", "ohif")
    script = os.path.basename(max(glob.glob(os.path.join(bundle, "app.bundle.*.js")), key=os.path.getsize))
    picture = os.path.relpath(sorted(glob.glob(os.path.join(bundle, "assets", "*.png")))[0], bundle)
    browser = {"Accept-Encoding": "gzip, deflate, br, zstd"}
    for path, packed in (("", True), (script, True), (picture, False)):
        r = requests.get(f"{always}/ohif/{path}", headers=browser, stream=True)
        wire = r.raw.read(decode_content=False)
        with open(os.path.join(bundle, path or "index.html"), "rb") as f:
            original = f.read()
        assert r.status_code == 200 and (r.headers.get("content-encoding") == "gzip") == packed, path
        assert (zlib.decompress(wire, 16 + zlib.MAX_WBITS) if packed else wire) == original, path
        if packed and len(original) > 1 << 20:
            assert len(wire) < len(original) / 2, (path, len(wire), len(original))
    local = requests.get(f"{server['url']}/ohif/{script}", headers=browser, stream=True)
    assert "content-encoding" not in local.headers and local.raw.read(decode_content=False)[:1] != b"\x1f"
