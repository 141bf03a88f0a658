"""Tests of the core bridge on GPT-2 (issue 2), against the untouched HF model and hand computation."""
