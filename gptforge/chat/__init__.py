"""Chat: conversations rendered into tokens and loss masks, conversation data, and SFT."""
