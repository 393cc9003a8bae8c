"""One keyed message catalogue per language; bot.messages renders them."""
