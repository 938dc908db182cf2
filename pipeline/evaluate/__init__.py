"""The parts of the eval stage; the public entry point and the definitions are in `pipeline.eval`.

- `metrics`: pure figures from references, token streams and pause traces (no model, no files).
- `sources`: eval utterances -> `Reference`s (dataset folder, audio + transcripts, objects).
- `stream`: one checkpoint streamed in Candle or PyTorch, words decoded.
- `report`: metrics.json, traces.npz, PNGs, index.html and the summary table.
"""
