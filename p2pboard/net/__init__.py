"""The I/O edge: the asyncio loop driver and the multicast socket."""
