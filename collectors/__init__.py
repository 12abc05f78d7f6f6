"""Exchange collectors: adapters, connection lifecycle and the pure book/candle engine."""
