"""The broker link: topics, payload encoding, and the paho-mqtt client."""
