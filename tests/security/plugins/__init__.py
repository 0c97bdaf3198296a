"""Actor classes for the security suite.

They are shipped to sandboxed actor processes by import path, and the sandbox
exposes only this package's directory (plus the interpreter, the environment and
actorbox itself), so these modules import nothing but the standard library and
actorbox.
"""
