"""Test support for the native HeartMuLa implementation: what only the golden-fixture comparison needs.

The fixtures were produced by the official heartlib under torch 2.5.1; reproducing them takes the old CPU
exponential stream (`legacy_rng`), the reference's codec window plan with its quirks (`reference_codec`),
and a view of the LM's and the codec's intermediates (`recording`, hooks on the production modules). The
runner (`python -m tests.heartmula_reference.conformance DIR`) compares every case. None of it is installed
or imported by `worker`: production runs one path (docs/HEARTMULA.md §8).
"""
