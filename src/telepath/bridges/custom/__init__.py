"""Custom WebSocket agents: the telepath protocol and Twilio Media Streams."""
