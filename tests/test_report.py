import pandas as pd
import pytest

from relapse.report.tables import summary_table, to_markdown, with_retained


def _rows():
    rows = []
    for quant, target_f, unlearned_f in (("none-w16", 80.0, 20.0), ("rtn-w4", 60.0, 45.0)):
        for method, hp, value in (("target", "default", target_f), ("npo_gdr", "lr=0.001", unlearned_f)):
            rows.append({"bench": "b", "method": method, "hp": hp, "quant": quant,
                         "metric": "knowmem", "split": "forget", "stat": "rougeL_f1", "value": value})
            rows.append({"bench": "b", "method": method, "hp": hp, "quant": quant,
                         "metric": "knowmem", "split": "retain", "stat": "rougeL_f1", "value": 90.0})
    return pd.DataFrame(rows)


def test_retained_is_ratio_to_target_at_matched_quant():
    out = with_retained(_rows())
    forget = out[(out.method == "npo_gdr") & (out.split == "forget")].set_index("quant")
    assert forget.loc["none-w16", "retained"] == pytest.approx(0.25)
    assert forget.loc["rtn-w4", "retained"] == pytest.approx(0.75)
    assert (out[out.method == "target"].retained == 1.0).all()


def test_summary_table_and_markdown():
    table = summary_table(_rows())
    assert table.method.tolist() == ["target", "npo_gdr"]
    row = table.set_index("method").loc["npo_gdr"]
    assert row["rtn-w4 KnowMem_f"] == 45.0 and row["rtn-w4 retained"] == pytest.approx(0.75)
    md = to_markdown(table, "caption")
    assert md.count("\n|") == 4 and "0.75" in md and "–" in md   # VerbMem missing -> dash


def test_retained_table_can_show_the_heldout_forget_people():
    """report.retained_metrics: knowmem_forget_heldout is KnowMem on split forget_heldout of the
    unlearned model over the target's, at the same quant, beside the in-sample KnowMem_f."""
    from relapse.report.measures import wide

    rows = _rows()
    held = rows[rows.split == "forget"].assign(split="forget_heldout")
    held["value"] = held.value / 2 + (held.method == "target") * 10     # 50 | 10, 40 | 22.5
    frame = wide(pd.concat([rows, held]), ["knowmem_forget", "knowmem_forget_heldout"])
    npo = frame[frame.method == "npo_gdr"].set_index("quant")
    assert npo.loc["none-w16", "retained KnowMem_f"] == pytest.approx(20 / 80)
    assert npo.loc["none-w16", "retained KnowMem_f_heldout"] == pytest.approx(10 / 50)
    assert npo.loc["rtn-w4", "retained KnowMem_f_heldout"] == pytest.approx(22.5 / 40)
