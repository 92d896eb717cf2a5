"""polysocket's built-in backplanes, each a pluggy plugin found through its entry point in the
``polysocket.backplanes`` group, exactly as an outside one is (the contract:
:mod:`polysocket.backplane`)."""
