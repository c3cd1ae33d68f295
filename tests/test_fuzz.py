"""Property-based fuzzing of the infer parameters: whatever a client sends, the answer is 200 or a 4xx with a
message, never a server error, and the server keeps serving."""

from __future__ import annotations

import json

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

scalar = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                   st.none(), st.booleans())
point = st.one_of(st.lists(st.integers(-5, 140), min_size=0, max_size=5), st.lists(scalar, max_size=4), scalar)
clicks = st.one_of(st.lists(point, max_size=4), scalar, st.dictionaries(st.text(max_size=3), scalar, max_size=2))
params = st.fixed_dictionaries(
    {},
    optional={
        "foreground": clicks,
        "background": clicks,
        "label": st.one_of(st.text(max_size=300), scalar),
        "result_extension": st.one_of(st.sampled_from([".nrrd", ".nii.gz", ".exe", "../x", "", ".seg.nrrd"]), scalar),
        "result_dtype": st.one_of(st.sampled_from(["uint8", "float64", "bogus"]), scalar),
        "reset_state": scalar,
        "client_id": st.one_of(st.text(max_size=20), scalar),
    },
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=params)
def test_infer_never_fails_with_a_server_error(server, p):
    r = requests.post(server["url"] + "/infer/limnet?image=blob&output=json",
                      data={"params": json.dumps(p, allow_nan=True)}, timeout=300)
    assert r.status_code == 200 or 400 <= r.status_code < 500, (p, r.status_code, r.text[:300])
    if r.status_code != 200:
        assert r.json().get("detail")
