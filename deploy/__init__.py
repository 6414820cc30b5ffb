"""Deployment tooling: certificates and keys (`strata certs`) and the loopback stack (`strata deploy-local`).

It starts and configures Flower's own processes (SuperLink, SuperNodes, `flwr`); it imports
`shared` only, never the server's or the devices' code.
"""
