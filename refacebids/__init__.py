"""refacebids: replace the face in head images of a BIDS dataset with an average face."""

__version__ = "0.1.0"
