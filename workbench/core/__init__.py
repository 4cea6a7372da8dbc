"""The core: errors, files, the architecture adapter, model loading, offload, patches, the ledger, gates."""
