"""One colour per method across the book: no two methods' colours are close."""
import itertools

import numpy as np

from acllib import plotting
from acllib.config import LAYER_CURVE_METHODS, METHODS


def test_every_method_has_its_own_colour_far_from_the_others():
    own = {m: c for m, c in plotting.METHOD_COLORS.items() if m not in plotting.TWINS}
    for (a, ca), (b, cb) in itertools.combinations(own.items(), 2):
        assert np.linalg.norm(np.subtract(ca, cb)) > 0.25, (a, b)  # RGB in [0, 1]
    for twin, of in plotting.TWINS.items():
        assert plotting.METHOD_COLORS[twin] == plotting.METHOD_COLORS[of]
    assert set(LAYER_CURVE_METHODS) <= set(plotting.METHOD_COLORS)
    assert {"CE", "CE+SCL", "ACL", "ACL-Embed"} <= set(plotting.METHOD_COLORS) and len(METHODS) == 4


def test_mha_twins_are_dashed_and_the_rest_solid():
    assert plotting.METHOD_DASHES["JT-MHA"] and plotting.METHOD_DASHES["ALT-MHA"]
    assert not plotting.METHOD_DASHES["2ST-MHA"] and not plotting.METHOD_DASHES["JT"]


def test_captions_name_each_tasks_data_and_schedule_from_the_profile():
    text = plotting.caption("smoke", "tiny", [1, 2], "4 layers", tasks=["mrpc"])
    # smoke profile: 48 training examples, 2 epochs in both stages (acllib/config.py)
    assert text == ("Measured here: profile 'smoke', backbone 'tiny', seeds [1, 2]; "
                    "MRPC: 48 training examples, 2 epochs (stage 2 of 2ST: 2); 4 layers")
    assert "800 training examples" in plotting.caption("cpu", "minilm", [1], tasks=["sst2"])


def test_a_caption_leaves_out_stage_2_where_a_chapter_runs_no_2st():
    text = plotting.caption("smoke", "tiny", [1], tasks=["rte"], stage2=False)
    assert text.endswith("RTE: 48 training examples, 2 epochs")


def test_methods_on_the_same_fewer_seeds_share_one_clause():
    from acllib import plan
    assert plotting.fewer_seeds_text({"JT": [1, 2], "ALT": [1, 2], "2ST-linear": [1]}) == "JT, ALT on seeds [1, 2]; 2ST-linear on seeds [1]"
    assert plotting.fewer_seeds_text(plan.fewer_seeds("cpu", list(range(1, 9)))) == "JT, ALT, 2ST-linear on seeds [1, 2]"
    assert plotting.fewer_seeds_text(plan.fewer_seeds("smoke", [1, 2])) == ""
