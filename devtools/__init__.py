"""Development and test tools kept out of the runtime package and the Bento: a throw-away local
Redis, server processes for tests and benchmarks, fault injection."""
