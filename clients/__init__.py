"""Python clients of GSS: lookups (sync and asyncio), event subscription, snapshot reading."""
