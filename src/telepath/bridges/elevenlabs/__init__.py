"""ElevenLabs Conversational AI bridge."""
