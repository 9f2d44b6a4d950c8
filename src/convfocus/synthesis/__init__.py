"""convfocus.synthesis"""
