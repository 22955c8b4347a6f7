"""The language server: thin pygls handlers over assistant.completion."""
