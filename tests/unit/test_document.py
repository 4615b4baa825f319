"""One qspan.spans/1 document: the CLI and the server make the same one of the same recording."""

import json
import re



from helpers import DATA, REPO, local_client, run_qspan
from qspan import pipeline
from qspan.output import recording
from qspan.server.app import create_app
from qspan.server.settings import Settings

RECORDING = DATA / "stock-qd4-w100.qspan.gz"


def _server_document(tmp_path) -> dict:
    app = create_app(Settings(record_dir=tmp_path / "sessions"))
    with local_client(app) as client:
        sid = app.state.manager.open_recording(RECORDING).id
        r = client.get(f"/api/sessions/{sid}/export/spans.json")
        assert r.status_code == 200, r.text
        return r.json()


def test_the_cli_and_the_server_write_the_same_document(tmp_path):
    out = tmp_path / "spans.json"
    r = run_qspan("spans", str(RECORDING), "--out", str(out))
    assert r.returncode == 0, r.stderr
    cli = json.loads(out.read_text())
    server = _server_document(tmp_path)
    assert cli["spans"], "a document without spans would prove little"
    assert server == cli


def test_every_document_field_is_documented():
    rec = recording.read(RECORDING)
    doc = pipeline.document(rec, pipeline.correlate_recording(rec))
    schema = (REPO / "docs" / "spans-schema.md").read_text()
    top = schema[schema.index("## Top level"):schema.index("## Span")]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*)$", top, re.M))
    assert set(doc) == set(rows)
    for key in doc["trace"]:
        assert f"`{key}`" in rows["trace"], f"trace.{key} is not described in docs/spans-schema.md"
    for key in doc["stats"]:
        assert f"`{key}`" in rows["stats"], f"stats.{key} is not described in docs/spans-schema.md"
    assert doc["trace"]["end"]["reason"] and doc["trace"]["truncated"] is False
    starts = [(s["start_ns"], s["id"]) for s in doc["spans"]]
    assert starts == sorted(starts)
