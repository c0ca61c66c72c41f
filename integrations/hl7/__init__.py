"""HL7 v2 intake: MLLP listener, watched folder, parser, acknowledgements and message store."""
