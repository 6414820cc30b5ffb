"""The device side: Flower ClientApp, the device-resident data store, local training, ledger."""
