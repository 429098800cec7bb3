DROP TABLE IF EXISTS user_actions;
