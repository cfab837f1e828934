"""The ground floor: config, errors, the artifact folder and its cache, inputs, the report and
the parity measure. Imports nothing else of deploykit."""
