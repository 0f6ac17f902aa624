"""OpenAI Realtime (GA) bridge."""
