"""A graph config is drawn as Mermaid text and as an image (Graphviz dot)."""
import re


from apps.graph import load
from cli.graph_draw import main
from deployments.graph.draw import dot, layout, mermaid


def edges(spec) -> set[tuple[str, str, str | None, bool]]:
    drawing = layout(spec)
    label = {b.id: b.label.split("\n")[0] for b in drawing.boxes}
    return {(label[e.source], label[e.target], e.label, e.dashed) for e in drawing.edges}


def test_the_ab_graph_shows_the_split_and_the_dashed_shadow():
    found = edges(load("configs/graphs/ab.yaml").graph)
    assert ("split ab by request.user_id", "champion", "champion 50%", False) in found
    assert ("split ab by request.user_id", "challenger", "challenger 50%", False) in found
    assert ("shadow ranker", "fanout", "mirror", True) in found
    assert ("ensemble", "compared with the primary (recorded)", None, True) in found
    assert ("ranking", "answer: user_id, items, model", None, False) in found


def test_the_recommend_graph_shows_the_switch_and_its_soft_node():
    spec = load("configs/local.yaml").graph
    found = edges(spec)
    assert ("switch explanation", "explain", "request.explain eq True", False) in found
    assert ("switch explanation", "skip", "default", False) in found
    text = mermaid(spec)
    assert text.startswith("flowchart TD\n")
    assert 'explain<br/>llm · 10 s · soft"]' in text
    assert "class " in text and " soft" in text


def test_mermaid_and_dot_draw_the_same_boxes():
    spec = load("configs/graphs/ab.yaml").graph
    ids = {box.id for box in layout(spec).boxes}
    assert set(re.findall(r"^    (n\d+)[\[{(]", mermaid(spec), re.M)) == ids
    assert set(re.findall(r"^    (n\d+) \[", dot(spec), re.M)) == ids


def test_the_command_writes_mermaid_and_a_png(tmp_path):
    """Graphviz's dot is installed by `make venv`: its absence is a broken set-up, not a skip."""
    out, png = tmp_path / "g.mmd", tmp_path / "g.png"
    assert main(["configs/graphs/ab.yaml", "--out", str(out), "--png", str(png)]) == 0
    assert out.read_text().startswith("flowchart TD")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_config_is_refused_with_its_problems(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    text = open("configs/graphs/ab.yaml").read().replace("weight: 0.5, then: {kind: node, node: challenger}", "weight: 0.4, then: {kind: node, node: challenger}")
    bad.write_text(text)
    assert main([str(bad)]) == 1
    assert "graph.flow.steps[1].primary.variants: weights sum to 0.9, must be 1" in capsys.readouterr().err
