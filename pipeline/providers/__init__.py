"""Other providers' batch forms, one file per provider holding both directions (the request
converter and the result-line writer); common.py states the contract."""
