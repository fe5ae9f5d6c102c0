"""The verbs that compose the layers below: sweep (and its launchers), report, ensemble, flatness, evaluate, demo."""
