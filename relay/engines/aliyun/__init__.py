"""Alibaba Cloud Live real-time ASR tasks (CreateRtcAsrTask) through the official SDK."""
