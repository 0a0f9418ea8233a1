"""Every registered fix keeps the Fix contract.

A subject fix applies to some subject (a sample patient, else a case of a check that prescribes it);
applying it to the patched subject again changes nothing; a checkpoint of the patched subject replays
it to the same weights. A weights fix applies to some case-book Weights and returns tensors in kind.
Their attributes say what their docstrings no longer restate.
"""
from itertools import chain
from pathlib import Path

import pytest
import torch

from modeldoctor.core.errors import InputError
from modeldoctor.core.evidence import Weights
from modeldoctor.core.fix import DOC_HEADINGS, KINDS, SEED_STORIES, apply_fixes
from modeldoctor.core.registry import CHECKS, FIXES, SUBJECTS, build_subject, load_plugins
from modeldoctor.engine.casebook import load_cases
from modeldoctor.engine.checkpoint import load_checkpoint, save_checkpoint
from modeldoctor.samples import SAMPLES

load_plugins()
CASEBOOK = Path(__file__).resolve().parents[1] / "checks"
# Small data, untrained: building each sample takes well under a second.
SMALL = {
    "astro-multimodal": {"n_train": 64, "n_eval": 32},
    "crossmodal-retrieval": {"n_train": 64, "n_eval": 32},
    "dreaming-moe": {"n_train": 64, "n_eval": 32},
    "moving-tokens": {"n_train_videos": 32, "n_eval_videos": 16},
    "sparse-field": {"n_train_fields": 32, "n_eval_fields": 8},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sample_candidates():
    """(registered name, config) of every sample patient, failing variants first."""
    for variant in ("failing", "healthy"):
        for name, sample in sorted(SAMPLES.items()):
            yield name, {**getattr(sample, variant), **SMALL.get(name, {})}


def case_candidates(slug: str, monkeypatch):
    """(registered name, {}) of the case-book cases of every check that prescribes `slug`.

    Each case is registered as a subject for the test's duration, so a checkpoint can name it.
    """
    for check in sorted(c for c, cls in CHECKS.items() if slug in cls.fixes and (CASEBOOK / c).is_dir()):
        builders, _ = load_cases(CASEBOOK / check)
        for case, build in sorted(builders.items()):
            name = f"contract-case:{check}:{case}"
            monkeypatch.setitem(SUBJECTS, name, lambda config, build=build: build())
            yield name, {}


def applicable_subject(slug: str, monkeypatch):
    fix = FIXES[slug]()
    for name, config in chain(sample_candidates(), case_candidates(slug, monkeypatch)):  # the case book only if needed
        subject = build_subject(name, config)
        if fix.applicable(subject) is None:
            return subject
    return None


def state(subject) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in subject.model.state_dict().items()}


def assert_same_state(expected: dict, actual: dict, what: str) -> None:
    assert sorted(actual) == sorted(expected), f"{what}: state_dict keys differ: {sorted(set(actual) ^ set(expected))}"
    for key, value in expected.items():
        assert actual[key].shape == value.shape, f"{what}: {key} has shape {tuple(actual[key].shape)}, not {tuple(value.shape)}"
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, equal_nan=True, msg=f"{what}: {key} changed")


SUBJECT_FIXES = sorted(slug for slug, fix in FIXES.items() if fix.needs == "subject")
WEIGHTS_FIXES = sorted(slug for slug, fix in FIXES.items() if fix.needs == "weights")


@pytest.mark.parametrize("slug", SUBJECT_FIXES)
def test_fix_applies_is_idempotent_and_replays_from_a_checkpoint(slug, tmp_path, monkeypatch):
    subject = applicable_subject(slug, monkeypatch)
    assert subject is not None, f"fix {slug!r} applies to no sample patient and no case of a check that prescribes it"
    before = state(subject)

    patched = apply_fixes(subject, [slug])
    assert patched.fixes_applied == [*subject.fixes_applied, slug]
    assert_same_state(before, state(subject), f"{slug} on {subject.name}: the original")  # fixes act on a copy

    again = apply_fixes(patched, [slug])
    assert again.fixes_applied.count(slug) == 1
    assert_same_state(state(patched), state(again), f"{slug} applied twice on {subject.name}")

    path = save_checkpoint(tmp_path / "x.pt", patched)
    loaded = load_checkpoint(path).subject
    assert loaded.fixes_applied == patched.fixes_applied
    assert_same_state(state(patched), state(loaded), f"{slug} on {subject.name} through a checkpoint")


def weights_cases(slug: str):
    """The Weights of the case-book cases of every check that prescribes the weights fix `slug`."""
    for check in sorted(c for c, cls in CHECKS.items() if slug in cls.fixes and (CASEBOOK / c).is_dir()):
        builders, _ = load_cases(CASEBOOK / check)
        for case, build in sorted(builders.items()):
            weights = build()
            if isinstance(weights, Weights):
                yield f"{check}:{case}", weights


@pytest.mark.parametrize("slug", WEIGHTS_FIXES)
def test_weights_fix_replaces_tensors_in_kind_leaves_its_input_and_has_nothing_left_to_do(slug):
    """A weights fix returns new tensors of the same names, shapes and dtypes; the input is untouched; once applied,
    it no longer applies (it is idempotent); it refuses to act on a subject."""
    fix = FIXES[slug]()
    applied = 0
    for case, weights in weights_cases(slug):
        if fix.applicable_weights(weights) is not None:
            continue
        before = {name: weights.tensor(name).clone() for name in weights.names()}
        replaced = fix.apply_weights(weights)
        assert replaced and set(replaced) <= set(weights.names()), case
        for name, tensor in replaced.items():
            assert tensor.shape == before[name].shape and tensor.dtype == before[name].dtype, (case, name)
        assert_same_state(before, {name: weights.tensor(name) for name in weights.names()}, f"{slug} on {case}: the input")
        patched = Weights.from_state_dict({**before, **replaced})
        assert fix.applicable_weights(patched) is not None, f"{slug} on {case}: still applies after it was applied"
        applied += 1
    assert applied, f"weights fix {slug!r} applies to no case of a check that prescribes it"
    with pytest.raises(InputError, match="modeldoctor fix"):
        apply_fixes(build_subject("sparse-field", SMALL["sparse-field"]), [slug])


@pytest.mark.parametrize("slug", sorted(FIXES))
def test_fix_declares_kind_seed_and_retraining(slug):
    """Kind, retraining and seed story are attributes; a weights fix may come from outside the seed stories."""
    fix = FIXES[slug]
    declared = vars(fix)
    assert fix.slug == slug
    assert declared.get("kind") in KINDS, f"{slug}: kind must be one of {KINDS}"
    assert (declared.get("kind") == "weights") == (fix.needs == "weights"), f"{slug}: kind 'weights' iff needs 'weights'"
    assert isinstance(declared.get("needs_retraining"), bool), f"{slug}: set needs_retraining"
    assert all(seed in SEED_STORIES for seed in fix.seeds()), f"{slug}: seed {fix.seed!r}"
    assert fix.seeds() or fix.needs == "weights", f"{slug}: a subject fix names the seed stories that prescribe it"


@pytest.mark.parametrize("slug", sorted(FIXES))
def test_fix_doc_has_its_headings_and_the_generated_facts(slug):
    fix = FIXES[slug]
    lines = fix.doc().splitlines()
    assert lines[0] == fix.summary_line() and lines[2] == fix.facts()
    assert [line for line in lines if line in DOC_HEADINGS] == list(DOC_HEADINGS), slug
    assert "Seed" not in lines and "Retraining" not in lines, f"{slug}: the docstring restates its attributes"


def test_seed_story_names_match_the_sample_patients():
    assert {sample.seed_story[:3]: name for name, sample in SAMPLES.items()} == SEED_STORIES
