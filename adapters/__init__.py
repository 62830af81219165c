"""Backend adapters: one module per backend kind behind `adapters.base.Backend`."""
