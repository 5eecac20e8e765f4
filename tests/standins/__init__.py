"""Stand-ins for cloud APIs no maintained emulator covers: small stateful fakes of each
cloud's HTTP API, served on loopback, built from the payloads the clouds publish.

They stand in for the cloud at the SDK's HTTP boundary: the drivers and the SDKs run
unchanged, pointed at the stand-in the way a user points them at a private endpoint.
"""
