"""swiftlike: an asyncio-native core of an OpenStack-style cloud."""

__version__ = "0.1.0"
