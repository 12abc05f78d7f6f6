"""The shared base of the exchange collectors: adapters, connections and the collector runtime.

`adapter` is what an exchange adapter builds on (protocol data, parsing helpers,
books); `connection` keeps one WebSocket alive; `collector` runs an adapter
over as many connections as the exchange's limits require.
"""
