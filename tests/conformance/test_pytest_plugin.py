"""The pytest plugin, as a third-party repo uses it (through pytester): `conformance_tests(...)`
gives one test per check, the `conformance_result` fixture the same, and a failure names the
check, its figure and the spec field most likely wrong."""

from __future__ import annotations

import shutil

from bridge_core.conformance import catalogue

N_CHECKS = len(catalogue())
GPT2_MODELS = 4  # test_config, the `unscaled` and `default_inner` variants, and the eager load
# gpt2 has no relative position bias (rel_pos_bias, rel_pos_bias_edit skip on every test model), no q/k
# norms (qk_norm_layout skips) and no mixture of experts (the three moe_* checks skip), and variant_coverage
# runs on the base model only
N_SKIPPED = 3 * GPT2_MODELS + (GPT2_MODELS - 1) + 3 * GPT2_MODELS
N_TESTS = N_CHECKS * GPT2_MODELS


def test_one_line_gives_one_passing_test_per_check(pytester):
    pytester.makepyfile(
        test_my_arch="""
        from bridge_core.conformance import conformance_tests

        test_gpt2 = conformance_tests("gpt2")
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=N_TESTS - N_SKIPPED, skipped=N_SKIPPED)


def test_failure_names_check_and_field(pytester, broken_dir):
    shutil.copy(broken_dir / "relu_activation.yaml", pytester.path / "my_arch.yaml")
    pytester.makepyfile(
        test_my_arch="""
        from bridge_core.conformance import conformance_tests

        test_my_arch = conformance_tests("my_arch.yaml", checks=["bind", "mlp", "forward_parity"])
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, failed=2)  # on test_config and on the eager load
    result.stdout.fnmatch_lines(["*test_my_arch?base-mlp?*"])
    result.stdout.fnmatch_lines(["*conformance check 'mlp' failed for spec 'broken_relu_activation'*"])
    # the activation first; a sub-norm before the output projection (block.mlp.out_norm) would show the same way
    assert "Most likely wrong: spec field 'config.act_fn / block.mlp.out_norm'" in result.stdout.str()


def test_fixture_with_module_specs(pytester):
    pytester.makepyfile(
        test_fixture="""
        conformance_specs = ["gpt2"]

        def test_conforms(conformance_result):
            assert conformance_result.ok, conformance_result.explain()
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=N_TESTS - N_SKIPPED, skipped=N_SKIPPED)


def test_fixture_with_ini_specs_and_ids(pytester):
    pytester.makeini("[pytest]\nconformance_specs =\n    gpt2\n")
    pytester.makepyfile(
        test_ini="""
        def test_conforms(conformance_result):
            assert conformance_result.ok
        """
    )
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=N_TESTS - N_SKIPPED, skipped=N_SKIPPED)
    result.stdout.fnmatch_lines(["*test_conforms?gpt2-qkv_recompute? PASSED*"])
    result.stdout.fnmatch_lines(["*test_conforms?gpt2?unscaled?-qkv_recompute? PASSED*"])


def test_fixture_without_specs_is_a_usage_error(pytester):
    pytester.makepyfile(test_none="def test_conforms(conformance_result):\n    pass\n")
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    assert result.ret != 0
    assert "conformance_specs" in result.stdout.str() + result.stderr.str()
