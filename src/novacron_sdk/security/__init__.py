"""Security providers: key exchange, node identity and sealing of transport frames."""
