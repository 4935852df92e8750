"""Requests in, Results out. base.py states the contract (the Engine protocol, EngineSpec, Result
and the KINDS registry); a new engine is one file here registered there. dispatcher.py feeds a
pool and yields every result once; local.py and ray.py are the two pools."""
