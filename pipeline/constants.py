"""The stream format every stage shares, in one place.

Mimi reads 24 kHz mono audio in frames of 1920 samples (80 ms), so the model steps at 12.5 Hz.
The text delay is a property of each checkpoint (`stt_config.audio_delay_seconds`, read by
`pipeline.checkpoint.Checkpoint.text_delay`); DEFAULT_TEXT_DELAY is stt-1b-en_fr's value, used
only where a checkpoint does not say (Kyutai's configs/stt_1b_enfr.json: 0.5 s).
"""

SAMPLE_RATE = 24_000
FRAME_RATE = 12.5
FRAME_SAMPLES = 1920  # SAMPLE_RATE / FRAME_RATE
DEFAULT_TEXT_DELAY = 0.5
