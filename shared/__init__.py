"""The contract between collectors, gateway nodes and backend publishers.

Everything that crosses Redis or the Socket.IO wire is defined here once:
topic grammar (`topics`), event records (`events`), Redis names (`names`),
the codec (`codec`) and the publishers (`publisher`).
"""
