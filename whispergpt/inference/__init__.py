"""Inference: the sampling loop (``generate``), its per-frame step, the fine stage, the AudioLM
hierarchy and the audio-in / audio-out pipeline that ``whispergpt sample`` runs."""
