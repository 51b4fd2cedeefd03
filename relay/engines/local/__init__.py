"""The embedded local engine: ffmpeg reads the source, faster-whisper transcribes it."""
