"""Optional adapters that put timeaware's fused op into other libraries' models.

Each adapter is a submodule imported explicitly, because it imports its library:

    import timeaware.integrations.diffusers as tad   # needs `pip install timeaware[diffusers]`
    tad.apply(unet)

``import timeaware`` and ``import timeaware.integrations`` import none of them (DESIGN section 3).
"""
