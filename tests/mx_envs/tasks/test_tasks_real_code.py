"""Real-data checks of the code grader (need MX_DATA_DIR / installed packages; skipped otherwise).

The full sets run when ``MX_FULL_REAL_DATA=1`` (minutes); by default a deterministic subset keeps
the suite fast. Known failures of the CodeContests reference solutions (measured on the full 300,
see the module constants): problems whose checker accepts several outputs (``WRONG_ANSWER``),
reference solutions that do not fit the tests (``RUNTIME_ERROR``: they parse a different input
format) and slow Python references (``TIMEOUT``, 3x the problem's limit per test here).

HumanEval and MBPP+ are graded as input -> expected pairs recorded from the reference in a trusted
run (``mx_envs.tasks.code_reference``), so "the reference passes" checks the recording, the codec
and the host-side comparison end to end, not a tautology: the reference runs again, as a
candidate, in the grading file view, and its results travel back as data.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from mx_envs.tasks import grade_code, load_tasks

FULL = os.environ.get("MX_FULL_REAL_DATA") == "1"
BROKEN = "import sys\nprint(0)\nsys.exit(0)\n"

WRONG_ANSWER = ['1031_e_triple_flips_11983', '1041_e_tree_reconstruction_8858', '1071_c_triple_flips_5739', '1076_d_edge_deletion_9486', '1183_h_subsequences_hard_version_3870', '1217_d_coloring_edges_7410', '1324_f_maximum_white_subtree_3668', '1325_c_ehab_and_pathetic_mexs_1064', '1337_e_kaavi_and_magic_spell_10539', '136_d_rectangle_and_square_9500', '1391_e_pairs_of_pairs_6690', '1407_e_egor_in_the_republic_of_dagestan_1382', '1427_e_xum_2840', '1438_d_powerful_ksenia_5652', '1521_d_nastia_plays_with_a_tree_11693', '1540_b_tree_array_3053', '27_b_tournament_1914', '288_c_polo_the_penguin_and_xor_operation_9826', '2_c_commentator_problem_4414', '407_a_triangle_11184', '45_h_road_problem_460', '464_b_restore_cube__2130', '507_e_breaking_good_9731', '521_d_shop_3485', '576_a_vasya_and_petyas_game_7650', '618_c_constellation_3489', '633_c_spy_syndrome_2_3594', '680_c_bear_and_prime_100_4430', '715_b_complete_the_graph_3806', '716_d_complete_the_graph_158', '749_b_parallelogram_is_back_2975', '774_h_repairing_of_string_9638', '862_c_mahmoud_and_ehab_and_the_xor_2355', '925_c_big_secret_3711', '963_b_destruction_of_a_tree_65']
RUNTIME_ERROR = ['1056_d_decorate_apple_tree_1782', '1118_f1_tree_cutting_easy_version_12195', '1133_f1_spanning_tree_with_maximum_degree_10945', '1176_e_cover_it_10635', '1264_c_beautiful_mirrors_with_queries_6684', '1534_e_lost_array_11486']  # inputs in another format than the solution reads
# Slow Python references: whether they finish within 6 s depends on the machine's load.
TIMEOUT = ['1188_c_array_beauty_9595', '1238_e_keyboard_purchase_2831', '1278_f_cards_5019', '1349_d_slime_and_biscuits_751', '1503_e_2coloring_8359', '261_b_maxim_and_restaurant_4932', '28_c_bath_queue_2018', '540_d_bad_luck_island_6817', '623_d_birthday_6300']


def _grade_all(tasks, sandbox, solution=None, workers=2):
    def one(t):
        return t, grade_code(solution if solution is not None else t.tests.solutions[0], t.tests, sandbox)

    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(one, tasks))


@pytest.mark.data
@pytest.mark.slow
def test_humaneval_canonical_solutions_all_pass(grading_sandbox) -> None:
    tasks = load_tasks("humaneval", hub=False)
    assert len(tasks) == 164
    chosen = tasks if FULL else tasks[::2]
    results = _grade_all(chosen, grading_sandbox)
    failed = [t.id for t, g in results if not g.pass_all]
    assert failed == []
    if FULL:
        print(f"humaneval canonical solutions passing: 164/164 ({sum(g.total for _, g in results)} tests)")


@pytest.mark.data
@pytest.mark.slow
def test_mbppplus_canonical_solutions_pass(data_dir, grading_sandbox) -> None:
    tasks = load_tasks("mbppplus", hub=False)
    assert len(tasks) == 378
    # Every 8th problem, minus the ones whose EvalPlus inputs take the reference seconds each.
    slow = {"Mbpp/271", "Mbpp/300", "Mbpp/389", "Mbpp/392", "Mbpp/583", "Mbpp/589", "Mbpp/592", "Mbpp/599",
            "Mbpp/603", "Mbpp/630"}
    chosen = tasks if FULL else [t for t in tasks[::8] if t.metadata.get("row") is not None
                                 and t.id.split("/test/")[1] not in slow]
    results = _grade_all(chosen, grading_sandbox)
    failed = [(t.id, [d for d in g.details if d["verdict"] != "passed"][:2]) for t, g in results if not g.pass_all]
    if FULL:  # slow references near EvalPlus' limits may time out on a loaded machine (Mbpp/255)
        print(f"mbppplus canonical solutions passing: {len(results) - len(failed)}/378")
        assert len(failed) <= 1, failed
    else:
        assert failed == []


@pytest.mark.data
@pytest.mark.slow
def test_codecontests_reference_solutions(data_dir, grading_sandbox) -> None:
    tasks = load_tasks("codecontests", hub=False)
    assert len(tasks) == 300
    chosen = tasks if FULL else tasks[::10]
    results = _grade_all(chosen, grading_sandbox)
    known = set(WRONG_ANSWER) | set(RUNTIME_ERROR) | set(TIMEOUT)
    unexpected = [(t.id, g.verdicts) for t, g in results if not g.pass_all and t.id.split("/")[-1] not in known]
    assert unexpected == []
    passed = sum(g.pass_all for _, g in results)
    if FULL:
        print(f"codecontests reference solutions passing: {passed}/300")
        assert passed >= 247  # measured 250 under load ~25 (timeouts are load-dependent); 242 before issue 10


@pytest.mark.data
@pytest.mark.parametrize("name", ["humaneval", "mbppplus", "codecontests"])
def test_broken_solution_fails_on_real_data(name: str, data_dir, grading_sandbox) -> None:
    tasks = load_tasks(name, hub=False)[:5]
    assert all(not g.pass_all for _, g in _grade_all(tasks, grading_sandbox, solution=BROKEN))


@pytest.mark.parametrize("name", ["livecodebench", "apps", "codecontests", "humaneval", "mbpp", "mbppplus"])
def test_broken_solution_fails_on_every_code_dataset_format(name: str, grading_sandbox) -> None:
    for t in load_tasks(name, fixture=True):
        g = grade_code(BROKEN, t.tests, grading_sandbox)
        assert not g.pass_all and g.passed < g.total
